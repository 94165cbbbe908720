"""The walls between layers (DESIGN.md, "Doors between layers"), read from
the source: only the transport imports MPI, imports between packages form no
circle (type-only imports aside), no package imports another's private
names, nothing writes into another object's ``__dict__``, and mpips never
imports data_tools."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.mpitools import ROOT

SOURCES = sorted(p for top in ("mpips", "data_tools") for p in (ROOT / top).rglob("*.py"))


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The wall a module sits behind: a subpackage or top module of mpips, or data_tools."""
    parts = module.split(".")
    return "data_tools" if parts[0] == "data_tools" else ".".join(parts[:2])


def imports(path: Path, runtime_only: bool = True) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names) of every import, inside functions too;
    with ``runtime_only``, not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
    package = module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
    return out


def test_only_the_transport_imports_mpi4py():
    users = [f"{p.relative_to(ROOT)}:{line}" for p in SOURCES
             for line, module, _ in imports(p, runtime_only=False)
             if module.split(".")[0] == "mpi4py"
             and not module_of(p).startswith("mpips.transport")]
    assert not users, users


def test_mpips_never_imports_data_tools():
    users = [f"{p.relative_to(ROOT)}:{line}" for p in SOURCES if module_of(p).startswith("mpips")
             for line, module, _ in imports(p, runtime_only=False)
             if module.split(".")[0] == "data_tools"]
    assert not users, users


def test_no_import_circle_between_packages():
    edges: dict[str, set[str]] = {}
    for p in SOURCES:
        me = unit_of(module_of(p))
        for _, module, _ in imports(p):
            if module.split(".")[0] in ("mpips", "data_tools") and unit_of(module) != me:
                edges.setdefault(me, set()).add(unit_of(module))
    circles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                circles.append(" -> ".join(path + [nxt]))
            elif nxt not in path and nxt > path[0]:  # each circle once, from its least unit
                visit(nxt, path + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not circles, circles


def test_no_private_name_crosses_a_wall():
    crossings = []
    for p in SOURCES:
        me = unit_of(module_of(p))
        for line, module, names in imports(p, runtime_only=False):
            if module.split(".")[0] not in ("mpips", "data_tools") or unit_of(module) == me:
                continue
            crossings += [f"{p.relative_to(ROOT)}:{line} {module}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
            if any(part.startswith("_") for part in module.split(".")):
                crossings.append(f"{p.relative_to(ROOT)}:{line} {module}")
    assert not crossings, crossings


def test_nothing_writes_another_objects_dict():
    """Only config.Section fills its own __dict__ (attribute access to a section)."""
    users = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in SOURCES
             if p.relative_to(ROOT) != Path("mpips/config.py")
             for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Attribute) and n.attr == "__dict__"]
    assert not users, users
