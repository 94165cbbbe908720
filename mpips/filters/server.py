"""The filters of a KVServer (all tables): requests decoded, replies encoded."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..transport import Message
from . import key_codec
from .base import (
    ENTRY_MASK,
    FIXED_POINT,
    KEY_CACHE_HIT,
    KEY_CACHE_STORE,
    KEY_VARINT,
    KEY_ZLIB,
    VALUE_CODEC_BITS,
    FilterStats,
    concat,
)
from .codec import ValueCodec
from .key_cache import ReceiverKeyCache
from .spec import parse_specs, wire_bytes


class ServerFilters(ValueCodec):
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
