"""The filter chain of a table and direction, and the hooks the kv layer calls.

Directions. ``push``: PUSH and PUSHPULL requests (keys and pushed values,
worker -> server). ``pull``: PULL requests (keys, worker -> server) and the
values of PULL_REPLY (server -> worker, also for PUSHPULL). A filter list
says which filters run; they always run in this order:

    entries (kkt, significant; push only) -> key_cache -> key codec (key_varint |
    key_zlib) -> fixed_point -> value codec (zlib | lz4 | zstd)

Entry filters run once per request, before it is sliced by server, and are
stateful (residuals, recent weights): a request resent after a ring change is
not filtered again. Key filters run per message (the key cache is per peer).
Value filters are stateless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ConfigError, Option, at_least, non_negative, section
from ..transport import Message, Op
from ..transport.message import HEADER
from . import fixed_point, key_codec, value_codec
from .base import (
    ENTRY_MASK,
    FIXED_POINT,
    KEY_CACHE_HIT,
    KEY_CACHE_STORE,
    KEY_VARINT,
    KEY_ZLIB,
    KKT,
    SIGNIFICANT,
    VALUE_CODEC_BITS,
    FilterStats,
    concat,
    signature,
)
from .key_cache import ReceiverKeyCache, SenderKeyCache
from .kkt import KKTFilter
from .significant import SignificantFilter

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


class _Codec:
    """Key and value encodings shared by both ends."""

    def __init__(self, cfg: Any, specs: dict[tuple[int, str], Spec], seed: int):
        self.cfg = cfg.filters
        self.specs = specs
        self.rng = np.random.default_rng(seed)

    def encode_values(self, spec: Spec, vals: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
        """Values as filtered bytes and the header bits applied (0: unchanged)."""
        flags, out = 0, vals
        if spec.has("fixed_point") and vals.dtype.kind == "f":
            before = vals.nbytes
            q = fixed_point.quantize(vals, bits, self.rng, self.cfg.value_range)
            if q is not None:
                out, clipped = q
                flags |= FIXED_POINT
                st = spec.stat("fixed_point")
                st.add(before, out.nbytes)
                st.clipped += clipped
        codec = spec.value_codec
        if codec is not None:
            raw = np.ascontiguousarray(out).reshape(-1)
            itemsize = 1 if not self.cfg.value_shuffle else \
                (bits // 8 if flags & FIXED_POINT else raw.dtype.itemsize)
            packed = value_codec.compress(raw.view(np.uint8), codec, self.cfg.value_level,
                                          itemsize)
            spec.stat(codec).add(raw.nbytes, packed.nbytes)
            if packed.nbytes < raw.nbytes:  # incompressible: keep what we have
                out, flags = packed, flags | value_codec.CODEC_BITS[codec]
        return out, flags

    @staticmethod
    def decode_values(vals: np.ndarray, flags: int, dtype: np.dtype, vdim: int) -> np.ndarray:
        if flags & VALUE_CODEC_BITS:
            codec = value_codec.BIT_CODECS[flags & VALUE_CODEC_BITS]
            vals = value_codec.decompress(vals.view(np.uint8), codec)
            if not flags & FIXED_POINT:
                vals = vals.view(dtype)
        if flags & FIXED_POINT:
            vals = fixed_point.dequantize(vals.view(np.uint8), dtype)
        return vals.reshape(-1, vdim)


class WorkerFilters(_Codec):
    """The filters of one KVWorker (one table): encode requests, decode replies.

    Made by the KVWorker from the job's ``[filters]`` section; what the entry
    filters hold back is pushed by :meth:`mpips.kv.KVWorker.flush` (task
    boundaries, checkpoints, job end) from :meth:`take_held`."""

    def __init__(self, po: Any, table_id: int):
        names = [t.name for t in po.tables]
        specs = parse_specs(po.cfg, names)
        super().__init__(po.cfg, specs, seed=[po.cfg.job.seed, po.rank, table_id])
        self.po, self.table = po, table_id
        self.table_name = names[table_id]
        self.vdim = po.tables[table_id].vdim
        self.dtype = po.tables[table_id].np_dtype
        self.push = specs[(self.table, "push")]
        self.pull = specs[(self.table, "pull")]
        self.active = bool(self.push.names or self.pull.names)
        budget = self.cfg.cache_bytes
        self.cache_stats = FilterStats()  # hits, misses, evictions of both directions
        self.cache = SenderKeyCache(budget, self.cache_stats)
        self.entry_filters: list[tuple[str, Any]] = []
        if self.push.has("kkt"):
            self.entry_filters.append(("kkt", KKTFilter(
                self.vdim, self.cfg.kkt_l1, self.cfg.kkt_margin, self.cfg.kkt_accumulate)))
        if self.push.has("significant"):
            self.entry_filters.append(("significant", SignificantFilter(
                self.vdim, self.cfg.significant_threshold, self.cfg.significant_relative)))
        po.ring_listeners.append(lambda old, new: self.cache.clear())

    # ---- worker -> server --------------------------------------------------------
    def filter_entries(self, keys: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Entry filters, once per PUSH request (not on resends): the values to
        send, held-back entries as zero rows. :meth:`encode` leaves zero rows out
        of each message (with a presence bitmap when the full key list is
        cached, so a push still hits the list its pull sent). A zero row
        changes nothing on the server, so no entry filter is needed to drop it."""
        if not self.entry_filters:
            return vals
        kept_keys, kept = keys, vals
        row_bytes = 8 + vals.itemsize * self.vdim
        for name, f in self.entry_filters:
            before = kept_keys.size
            kept_keys, kept = f(kept_keys, kept, self.dtype)
            self.push.stat(name).add(before * row_bytes, kept_keys.size * row_bytes,
                                     before - kept_keys.size)
        full = np.zeros_like(vals)
        full[np.searchsorted(keys, kept_keys)] = kept
        return full

    def take_held(self) -> tuple[np.ndarray, np.ndarray] | None:
        """What the entry filters hold back (sorted unique keys, their summed
        rows), forgotten here: the caller pushes it unfiltered. None if nothing."""
        keys, rows = [], []
        for _, f in self.entry_filters:
            if f.residuals is not None and len(f.residuals):
                k, r = f.residuals.take_all()
                keys.append(k)
                rows.append(r)
        if not keys:
            return None
        k, r = np.concatenate(keys), np.concatenate(rows)
        order = np.argsort(k, kind="stable")
        k, r = k[order], r[order]
        uniq, first = np.unique(k, return_index=True)
        return uniq, np.add.reduceat(r, first, axis=0)

    def held_sum(self) -> np.ndarray:
        """The sum over keys of what the entry filters hold back (vdim values)."""
        total = np.zeros(self.vdim)
        for _, f in self.entry_filters:
            if f.residuals is not None and len(f.residuals):
                total += f.residuals.rows.sum(axis=0)
        return total

    def encode(self, msg: Message, dest: int, cache_keys: bool = True) -> Message:
        """A request as it goes on the wire to rank ``dest``. ``cache_keys``
        False: a one-off key list (a flush) that the key cache should not keep."""
        spec = self.pull if msg.op == Op.PULL else self.push
        if not spec.names:
            spec.wire.add(wire_bytes(msg), wire_bytes(msg))
            return msg
        before = wire_bytes(msg)
        keys = concat(msg.keys)
        vals = concat(msg.vals)
        flags = 0
        present = None
        if self.entry_filters and msg.op == Op.PUSH and keys.size:
            present = vals.reshape(keys.size, -1).any(axis=1)
            if present.all():
                present = None
            elif not (spec.has("key_cache") and cache_keys):
                keys, vals, present = keys[present], vals[present], None
        if spec.has("significant") and msg.op == Op.PUSH:
            flags |= SIGNIFICANT
        if spec.has("kkt") and msg.op == Op.PUSH:
            flags |= KKT
        head = np.empty(0, np.uint64)
        body = keys
        if spec.has("key_cache") and cache_keys:
            sig = signature(keys)
            if self.cache.lookup(dest, self.table, sig, keys.size, self.po.ring.version):
                flags |= KEY_CACHE_HIT
                head, body = np.array([sig, keys.size], np.uint64), None
            else:
                flags |= KEY_CACHE_STORE
                head = np.array([sig], np.uint64)
        if body is not None and spec.key_codec is not None:
            body = key_codec.encode_keys(keys, spec.key_codec, self.cfg.key_level)
            flags |= KEY_VARINT if spec.key_codec == "varint" else KEY_ZLIB
            spec.stat("key_" + spec.key_codec).add(keys.nbytes, body.nbytes)
        if flags & (KEY_CACHE_HIT | KEY_CACHE_STORE):
            # measured on plain keys: what caching alone saves
            spec.stat("key_cache").add(keys.nbytes, head.nbytes + (keys.nbytes if body
                                                                    is not None else 0))
        msg.keys = body if head.size == 0 else \
            (head if body is None else np.concatenate([head, body]))
        if present is not None:  # the full list is cached: a bitmap says who is sent
            flags |= ENTRY_MASK
            msg.meta = np.packbits(present).tobytes()
            vals = vals[present]
        if vals is not None:
            msg.vals = vals
            vals, vflags = self.encode_values(spec, vals, self.cfg.push_bits)
            if vflags:
                msg.vals, msg.vdim, flags = vals, 0, flags | vflags
        msg.filters = flags
        spec.wire.add(before, wire_bytes(msg))
        return msg

    # ---- server -> worker --------------------------------------------------------
    def decode_reply(self, msg: Message) -> Message:
        if msg.filters and msg.vals is not None:
            msg.vals = self.decode_values(msg.vals, msg.filters, self.dtype, self.vdim)
            msg.vdim, msg.filters = self.vdim, 0
        return msg

    def observe(self, keys: np.ndarray, pulled: np.ndarray) -> None:
        """A pull is complete: the KKT filter learns which weights are zero."""
        for name, f in self.entry_filters:
            if name == "kkt":
                f.observe(keys, pulled)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {d: {"wire": s.wire.as_dict(),
                                   **{n: st.as_dict() for n, st in s.stats.items()}}
                               for d, s in (("push", self.push), ("pull", self.pull))}
        if self.cache_stats.hits or self.cache_stats.misses:
            out["key_cache_lru"] = self.cache_stats.as_dict()
        return out


class ServerFilters(_Codec):
    """The filters of a KVServer (all tables): decode requests, encode replies."""

    def __init__(self, po: Any):
        self.tables = po.tables
        specs = parse_specs(po.cfg, [t.name for t in po.tables])
        super().__init__(po.cfg, specs, seed=[po.cfg.job.seed, po.rank, 1 << 20])
        # One cache per peer and table whatever the direction, as at the sender.
        self.cache = ReceiverKeyCache(self.cfg.cache_bytes, FilterStats())
        self.reply_wire: dict[int, FilterStats] = {}  # table -> replies sent
        self.request_wire: dict[int, FilterStats] = {}  # table -> requests received

    def decode_request(self, msg: Message) -> Message:
        """Keys and values as the worker gave them; ``msg.filters`` becomes 0."""
        st = self.request_wire.setdefault(msg.table, FilterStats())
        st.messages += 1
        st.bytes_after += msg.nbytes
        if not msg.filters:
            return msg
        flags, words = msg.filters, msg.keys
        if not 0 <= msg.table < len(self.tables):
            raise ValueError(f"filtered request from rank {msg.sender} for unknown table "
                             f"{msg.table}")
        table = self.tables[msg.table]
        cache = self.cache
        if flags & KEY_CACHE_HIT:
            keys = cache.fetch(msg.sender, msg.table, int(words[0]), int(words[1]),
                               msg.ring_version)
        else:
            body = words[1:] if flags & KEY_CACHE_STORE else words
            if flags & KEY_VARINT:
                keys = key_codec.decode_keys(body, "varint")
            elif flags & KEY_ZLIB:
                keys = key_codec.decode_keys(body, "zlib")
            else:
                keys = body
            if flags & KEY_CACHE_STORE:
                cache.store(msg.sender, msg.table, int(words[0]), keys, msg.ring_version)
        if flags & ENTRY_MASK:  # only the entries the bitmap names were sent
            present = np.unpackbits(np.frombuffer(msg.meta, np.uint8), count=keys.size)
            keys, msg.meta = keys[present.astype(bool)], b""
        elif flags & (KEY_CACHE_HIT | KEY_CACHE_STORE):
            # The server's store keeps the slots of this list under its signature.
            msg.key_signature = int(words[0])
        msg.keys = keys
        if msg.vals is not None and flags & (FIXED_POINT | VALUE_CODEC_BITS):
            msg.vals = self.decode_values(msg.vals, flags, table.np_dtype, table.vdim)
            msg.vdim = table.vdim
        msg.filters = 0
        return msg

    def encode_reply(self, reply: Message) -> None:
        """Filter the values of a pull reply in place."""
        spec = self.specs.get((reply.table, "pull"))
        st = self.reply_wire.setdefault(reply.table, FilterStats())
        before = wire_bytes(reply)
        if spec is not None and spec.names and reply.vals is not None:
            vals, flags = self.encode_values(spec, concat(reply.vals), self.cfg.pull_bits)
            if flags:
                reply.vals, reply.vdim, reply.filters = vals, 0, flags
        st.add(before, wire_bytes(reply))

    def stats(self) -> dict[str, Any]:
        names = [t.name for t in self.tables]
        out: dict[str, Any] = {"replies": {names[t]: s.as_dict()
                                           for t, s in self.reply_wire.items()},
                               "requests": {names[t]: s.as_dict()
                                            for t, s in self.request_wire.items()}}
        for (t, d), spec in self.specs.items():
            if spec.stats:
                out.setdefault(names[t], {})[d] = {n: s.as_dict()
                                                   for n, s in spec.stats.items()}
        if self.cache.stats.hits or self.cache.stats.evictions:
            out["key_cache_lru"] = self.cache.stats.as_dict()
        return out
