"""Job files: TOML with a typed schema, and ``-o section.key=value`` overrides.

Every section and key a job file may use is declared with :func:`section`,
next to the code that reads it; :data:`SECTIONS` lists where. :func:`load`
imports the modules of the runtime's sections, of the job's app and of every
section the file or an override names; any other section is declared when
first read (``cfg.lda`` on a linear job gives its defaults), so a rank does
not import every app to start one. Unknown sections or keys, wrong types and
impossible values raise :class:`ConfigError` naming the key and the file (or
the ``-o`` override).
"""

from __future__ import annotations

import importlib
import json
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A job file or override that cannot be used; the message says where."""


@dataclass(frozen=True)
class Option:
    kind: type | tuple[type, ...]
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple[Any, ...] | None = None


_SCHEMA: dict[str, dict[str, Option]] = {}

# Every section of a job file and the module that declares it.
SECTIONS: dict[str, str] = {
    "job": "mpips.config", "layout": "mpips.config", "kv": "mpips.config",
    "transport": "mpips.config",
    "data": "mpips.data",
    "checkpoint": "mpips.checkpoint",
    "consistency": "mpips.consistency",
    "filters": "mpips.filters.spec",
    "linear": "mpips.apps.linear.app",
    "bpg": "mpips.apps.bpg",
    "lda": "mpips.apps.lda.app",
    "sketch": "mpips.apps.sketch.app",
    "bench": "mpips.bench.kv",
    "scale": "mpips.bench.scale",
    "failover": "mpips.bench.failover",
}


# Sections every job reads, whatever its app.
RUNTIME_SECTIONS = ("job", "layout", "kv", "transport", "data", "checkpoint", "consistency",
                    "filters")


def declare(name: str) -> None:
    """Import the module that declares section ``name`` (a key of SECTIONS)."""
    if name not in _SCHEMA:
        importlib.import_module(SECTIONS[name])


def _defaults(name: str) -> dict[str, Any]:
    declare(name)
    return {k: opt.default for k, opt in _SCHEMA[name].items()}


def section(name: str, options: dict[str, Option]) -> None:
    """Declare (or extend) a job file section; it must be listed in SECTIONS."""
    if name not in SECTIONS:
        raise RuntimeError(f"section [{name}] is not listed in mpips.config.SECTIONS")
    _SCHEMA.setdefault(name, {}).update(options)


def declare_all() -> None:
    """Import every module of :data:`SECTIONS` (once), so all sections exist."""
    for module in sorted(set(SECTIONS.values())):
        importlib.import_module(module)


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a table"}


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


class Section:
    """Attribute access to one section's values."""

    def __init__(self, name: str, values: dict[str, Any]):
        self._name = name
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"Section({self._name!r}, {self.as_dict()!r})"


class Config:
    """A validated job: ``cfg.layout.servers``, ``cfg.section("job")``."""

    def __init__(self, values: dict[str, dict[str, Any]], source: str):
        self.source = source
        self._sections = {name: Section(name, vals) for name, vals in values.items()}

    def __getattr__(self, name: str) -> Section:
        try:
            return self.section(name)
        except KeyError:
            raise AttributeError(name) from None

    def section(self, name: str) -> Section:
        """A section: as loaded, or, for one the job did not name, its
        defaults (its module imported now)."""
        sections = self.__dict__["_sections"]
        if name not in sections and name in SECTIONS:
            sections[name] = Section(name, _defaults(name))
        return sections[name]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every section (all of SECTIONS), as plain values."""
        return {name: self.section(name).as_dict() for name in SECTIONS}


def _validate(name: str, key: str, value: Any, where: str) -> Any:
    opt = _SCHEMA[name][key]
    kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise ConfigError(
            f"{where}: [{name}] {key} must be {_type_name(opt.kind)}, got {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        # TOML has inf and nan: a rate or a timeout of either trains nonsense
        raise ConfigError(f"{where}: [{name}] {key} must be a finite number, got {value!r}")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(
            f"{where}: [{name}] {key} = {value!r} is not one of "
            + ", ".join(repr(c) for c in opt.choices)
        )
    if opt.check is not None:
        problem = opt.check(value)
        if problem:
            raise ConfigError(f"{where}: [{name}] {key} = {value!r} {problem}")
    return value


def _parse_override(text: str) -> tuple[str, str, Any]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"-o {text}: an override is section.key=value")
    path, raw = text.split("=", 1)
    name, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: -o job.output=runs/x
    return name, key, value


def load(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Read, merge and validate a job file and its overrides."""
    source = str(path) if path is not None else "<defaults>"
    raw = _read(path)
    parsed = [(text, *_parse_override(text)) for text in overrides]
    app = _given(raw, parsed, "job", "app")
    named = [*RUNTIME_SECTIONS, *([app] if app in SECTIONS else []), *raw,
             *(n for _, n, _, _ in parsed)]
    values: dict[str, dict[str, Any]] = {}
    for name in named:
        if name in SECTIONS and name not in values:
            values[name] = _defaults(name)
    for name, table in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}]{_suggest(name, SECTIONS)} "
                              f"(known: {', '.join(sorted(SECTIONS))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a [section], got {table!r}")
        for key, value in table.items():
            if key not in _SCHEMA[name]:
                raise ConfigError(
                    f"{source}: unknown key [{name}] {key}{_suggest(key, _SCHEMA[name])} "
                    f"(known: {', '.join(sorted(_SCHEMA[name]))})"
                )
            values[name][key] = _validate(name, key, value, source)
    for text, name, key, value in parsed:
        where = f"-o {text}"
        if name not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{name}]{_suggest(name, SECTIONS)}")
        if key not in _SCHEMA[name]:
            raise ConfigError(f"{where}: unknown key [{name}] {key}"
                              f"{_suggest(key, _SCHEMA[name])}")
        opt = _SCHEMA[name][key]
        if isinstance(value, str) and opt.kind is not str and str not in _as_tuple(opt.kind):
            raise ConfigError(
                f"{where}: [{name}] {key} must be {_type_name(opt.kind)}, got {value!r}"
            )
        values[name][key] = _validate(name, key, value, where)
    return Config(values, source)


def _suggest(word: str, known: Iterable[str]) -> str:
    """``: did you mean 'x'?`` for the closest known name, if one is close."""
    import difflib
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f": did you mean {close[0]!r}?" if close else ""


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _read(path: str | Path | None) -> dict[str, Any]:
    """A job file's TOML, unchecked ({} for no file)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _given(raw: dict[str, Any], parsed: list[tuple[str, str, str, Any]], name: str,
           key: str) -> Any:
    """[name] key as given, unchecked: the last override, else the file, else
    the default."""
    for _, n, k, v in reversed(parsed):
        if (n, k) == (name, key):
            return v
    table = raw.get(name)
    if isinstance(table, dict) and key in table:
        return table[key]
    return _defaults(name)[key]


def peek(path: str | Path | None, overrides: Iterable[str], name: str, key: str) -> Any:
    """One value before the whole file is validated (which app to import)."""
    return _given(_read(path), [(t, *_parse_override(t)) for t in overrides], name, key)


def toml_value(value: Any) -> str:
    """``value`` as TOML (strings quoted, true/false, inline arrays and tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def describe(names: Iterable[str] | None = None) -> str:
    """Sections (all, or ``names``) as a TOML job file: every key at its
    default, its help as a comment above it."""
    declare_all()
    chosen = sorted(_SCHEMA) if names is None else list(names)
    for name in chosen:
        if name not in _SCHEMA:
            raise ConfigError(f"no section [{name}] (known: {', '.join(sorted(_SCHEMA))})")
    lines = []
    for name in chosen:
        lines.append(f"[{name}]")
        for key, opt in _SCHEMA[name].items():
            lines.extend(f"# {line}" for line in _wrap(opt.help))
            lines.append(f"{key} = {toml_value(opt.default)}")
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int = 86) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width) or [""]


# Sections every job has. Apps and later layers add theirs.
section("job", {
    "name": Option(str, "job", "job name, used in messages and output files"),
    "app": Option(str, "linear", "the app `train` runs"),
    "output": Option(str, "runs/job", "output folder for metrics, models, checkpoints"),
    "seed": Option(int, 0, "random seed", non_negative),
    "progress_interval": Option(float, 2.0, "seconds between progress lines on rank 0",
                                positive),
    "log_format": Option(str, "text", "progress lines: 'text' for people, 'json' (one "
                         "object per line, raw numbers) for machines", choices=("text", "json")),
})
section("layout", {
    "servers": Option(int, 0, "number of server ranks; 0 picks a default (about a third "
                      "of the non-scheduler ranks, at least 1)", non_negative),
    "virtual_servers": Option(int, 1, "key ranges per server on the ring", positive),
    "replication": Option(int, 0, "k: successors on the ring that hold a replica of a range",
                          non_negative),
    "spread_hosts": Option(bool, True, "place ring neighbours on different hosts where "
                           "there are several"),
})
section("kv", {
    "chunk_keys": Option(int, 1 << 20, "a request with more keys goes to each server in "
                         "chunks of this many (one message each), so that transfer, the "
                         "server's work and the reply overlap; 0: never split",
                         lambda v: None if v == 0 or v >= 1024 else "must be 0 or >= 1024"),
    "coalesce_bytes": Option(int, 0, "batch small requests: a request message below this "
                             "size, issued while others are in flight, waits and goes with "
                             "the next ones in one MPI message when the worker next waits "
                             "(servers batch the replies alike); 0: off. For windows of "
                             "small requests; it delays a request issued before a long "
                             "computation until the next wait", non_negative),
})
section("transport", {
    "timeout": Option(float, 120.0, "seconds a wait may take before it fails, naming the peer",
                      positive),
    "idle_sleep": Option(float, 2e-4, "longest sleep between polls of an idle rank (s)",
                         non_negative),
    "yield_seconds": Option(float, 2e-3, "seconds an idle rank hands the core on "
                            "(sched_yield) between polls before it starts to sleep; a "
                            "large value waits as an MPI blocking call does with "
                            "mpi_yield_when_idle, 0 sleeps at once", non_negative),
    "heartbeat_interval": Option(float, 1.0, "seconds between a rank's heartbeats (sent "
                                 "by a thread: a rank computing still beats)", positive),
    "heartbeat_timeout": Option(float, 60.0, "seconds of silence after which the scheduler "
                                "takes a rank for hung (gone under ULFM, else the job "
                                "stops)", positive),
    "recv_pool_bytes": Option(int, 256 << 20, "bytes of large receive buffers a rank keeps "
                              "to reuse (fresh memory costs page faults); 0: none",
                              non_negative),
})
