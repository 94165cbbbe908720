"""The filters of one KVWorker (one table): entry filters once a request,
key and value encodings per message, replies decoded.

Entry filters run once per request, before it is sliced by server, and are
stateful (residuals, recent weights): a request resent after a ring change is
not filtered again. Key filters run per message (the key cache is per peer).
Value filters are stateless.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..transport import Message, Op
from . import key_codec
from .base import (
    ENTRY_MASK,
    KEY_CACHE_HIT,
    KEY_CACHE_STORE,
    KEY_VARINT,
    KEY_ZLIB,
    KKT,
    SIGNIFICANT,
    FilterStats,
    concat,
    signature,
)
from .codec import ValueCodec
from .key_cache import SenderKeyCache
from .kkt import KKTFilter
from .significant import SignificantFilter
from .spec import parse_specs, wire_bytes


class WorkerFilters(ValueCodec):
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
            size = wire_bytes(msg)
            spec.wire.add(size, size)
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
