"""Which filters run on each (table, direction): the ``[filters]`` section of a
job file and its parsing; errors name the key and the file.

Directions. ``push``: PUSH and PUSHPULL requests (keys and pushed values,
worker -> server). ``pull``: PULL requests (keys, worker -> server) and the
values of PULL_REPLY (server -> worker, also for PUSHPULL). A filter list
says which filters run; they always run in this order:

    entries (kkt, significant; push only) -> key_cache -> key codec (key_varint |
    key_zlib) -> fixed_point -> value codec (zlib | lz4 | zstd)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ConfigError, Option, at_least, non_negative, section
from ..transport import Message
from ..transport.message import HEADER
from . import value_codec
from .base import FilterStats

ENTRY_FILTERS = ("kkt", "significant")
KEY_FILTERS = ("key_cache", "key_varint", "key_zlib")
VALUE_FILTERS = ("fixed_point", "zlib", "lz4", "zstd")
FILTERS = ENTRY_FILTERS + KEY_FILTERS + VALUE_FILTERS
DIRECTIONS = ("push", "pull")

section("filters", {
    "tables": Option(list, [], "tables the push/pull filter lists apply to ([] = every "
                     "table)"),
    "push": Option(list, [], "filters of push requests: " + ", ".join(FILTERS)),
    "pull": Option(list, [], "filters of pull requests and replies: "
                   + ", ".join(KEY_FILTERS + VALUE_FILTERS)),
    "per_table": Option(dict, {}, "per-table lists, e.g. {eval = {push = [], pull = []}}; "
                        "they replace push/pull for that table"),
    "cache_bytes": Option(int, 64 << 20, "key cache budget per (peer, table) at each end "
                          "(bytes, 8 per cached key)", at_least(8)),
    "key_level": Option(int, 1, "zlib level of key_zlib", at_least(0)),
    "value_level": Option(int, 1, "level of the value codec (zlib 0-9, zstd 1-22)",
                          at_least(0)),
    "value_shuffle": Option(bool, True, "group value bytes by significance before "
                            "compressing (Blosc-style shuffle)"),
    "push_bits": Option(int, 8, "fixed_point bits of pushed values (8 or 16)",
                        lambda v: None if v in (8, 16) else "must be 8 or 16"),
    "pull_bits": Option(int, 16, "fixed_point bits of pulled values (8 or 16)",
                        lambda v: None if v in (8, 16) else "must be 8 or 16"),
    "value_range": Option(float, 0.0, "fixed_point range [-r, r]; 0 = each message's "
                          "min and max", non_negative),
    "significant_threshold": Option(float, 1e-4, "significant: send an entry when its "
                                    "accumulated change exceeds this", non_negative),
    "significant_relative": Option(bool, False, "significant: threshold times the "
                                   "request's mean |change| instead of absolute"),
    "kkt_l1": Option(float, 0.0, "kkt: the L1 penalty in pushed-gradient units (> 0 when "
                     "kkt is on)", non_negative),
    "kkt_margin": Option(float, 0.0, "kkt: skip only if |g| <= (1 - margin) * l1",
                         non_negative),
    "kkt_accumulate": Option(bool, False, "kkt: keep skipped gradients and send their "
                             "sum later (FTRL)"),
})


@dataclass
class Spec:
    """Which filters run on one (table, direction)."""

    names: frozenset[str] = frozenset()
    stats: dict[str, FilterStats] = field(default_factory=dict)
    wire: FilterStats = field(default_factory=FilterStats)  # whole messages

    def has(self, name: str) -> bool:
        return name in self.names

    @property
    def key_codec(self) -> str | None:
        return "varint" if "key_varint" in self.names else \
            "zlib" if "key_zlib" in self.names else None

    @property
    def value_codec(self) -> str | None:
        return next((c for c in ("zlib", "lz4", "zstd") if c in self.names), None)

    def stat(self, name: str) -> FilterStats:
        return self.stats.setdefault(name, FilterStats())


def parse_specs(cfg: Any, tables: list[str]) -> dict[tuple[int, str], Spec]:
    """(table id, direction) -> Spec from the [filters] section; errors name the key."""
    fc = cfg.filters
    where = f"{cfg.source}: [filters]"

    def names(value: Any, key: str, direction: str) -> frozenset[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} {key} must be a list of filter names, got {value!r}")
        allowed = FILTERS if direction == "push" else KEY_FILTERS + VALUE_FILTERS
        for v in value:
            if v not in allowed:
                raise ConfigError(f"{where} {key}: {v!r} is not a {direction} filter "
                                  f"(one of {', '.join(allowed)})")
        picked = frozenset(value)
        if len(picked & {"key_varint", "key_zlib"}) > 1 or \
                len(picked & {"zlib", "lz4", "zstd"}) > 1:
            raise ConfigError(f"{where} {key}: pick one key codec and one value codec")
        for codec in picked & {"lz4", "zstd"}:
            if not value_codec.available(codec):
                raise ConfigError(f"{where} {key}: {codec!r} needs its package on every "
                                  "rank (pip install lz4 zstandard)")
        if "kkt" in picked and fc.kkt_l1 <= 0:
            raise ConfigError(f"{where} {key}: kkt needs [filters] kkt_l1 > 0")
        return picked

    for t in fc.tables:
        if t not in tables:
            raise ConfigError(f"{where} tables: no table {t!r} (tables: {', '.join(tables)})")
    for t, lists in fc.per_table.items():
        if t not in tables:
            raise ConfigError(f"{where} per_table: no table {t!r} "
                              f"(tables: {', '.join(tables)})")
        if not isinstance(lists, dict) or set(lists) - set(DIRECTIONS):
            raise ConfigError(f"{where} per_table.{t} must be {{push = [...], pull = [...]}}")
    specs = {}
    for tid, t in enumerate(tables):
        for d in DIRECTIONS:
            if t in fc.per_table:
                chosen = names(fc.per_table[t].get(d, []), f"per_table.{t}.{d}", d)
            elif not fc.tables or t in fc.tables:
                chosen = names(getattr(fc, d), d, d)
            else:
                chosen = frozenset()
            specs[(tid, d)] = Spec(chosen)
    return specs


def wire_bytes(msg: Message) -> int:
    """Bytes of ``msg`` on the wire (header, 8-byte aligned sections, meta)."""
    def size(buf: Any) -> int:
        if buf is None:
            return 0
        n = buf.nbytes if isinstance(buf, np.ndarray) else sum(b.nbytes for b in buf)
        return n + (-n % 8)
    return HEADER.itemsize + size(msg.keys) + size(msg.vals) + len(msg.meta)
