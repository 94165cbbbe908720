"""KVServer: holds the ranges of every table this rank owns and answers
push, pull and pushpull requests with the table's update handle."""

from __future__ import annotations

import numpy as np

from ..postoffice import Postoffice
from ..transport import Message, Op
from .store import SortedStore


class KVServer:
    """Serves requests for all tables of the job on one server rank."""

    def __init__(self, po: Postoffice):
        self.po = po
        self.server = po.layout.servers.index(po.rank)
        self.stores = [t.store(t) if t.store is not None
                       else SortedStore(t.vdim, t.np_dtype, t.handle) for t in po.tables]
        self.raw_sessions: list[Message] = []
        self.requests = 0
        self.keys_served = 0
        for op in (Op.PUSH, Op.PULL, Op.PUSHPULL):
            po.on(op, self.handle)
        po.on(Op.RAW_BENCH, self._raw_bench)

    def store(self, table: str) -> SortedStore:
        return self.stores[self.po.table_ids[table]]

    def handle(self, msg: Message) -> None:
        try:
            self._check(msg)
        except ValueError as e:
            self.po.send(msg.sender, Message(op=Op.ERROR, table=msg.table, ts=msg.ts,
                                             meta=str(e).encode()))
            return
        store = self.stores[msg.table]
        keys = msg.keys
        self.requests += 1
        self.keys_served += keys.size
        if msg.op == Op.PUSH:
            store.push(keys, msg.vals, msg.sender)
            self.po.send(msg.sender, Message(op=Op.PUSH_ACK, table=msg.table, ts=msg.ts))
        else:
            if msg.op == Op.PULL:
                vals = store.pull(keys, sender=msg.sender)
            else:
                vals = store.pushpull(keys, msg.vals, msg.sender)
            self.po.send(msg.sender, Message(op=Op.PULL_REPLY, table=msg.table, ts=msg.ts,
                                             keys=None, vals=vals, vdim=store.vdim))

    def _check(self, msg: Message) -> None:
        if not 0 <= msg.table < len(self.stores):
            raise ValueError(f"unknown table id {msg.table}")
        keys = msg.keys
        ring = self.po.ring
        if keys.size:
            owners = ring.owners[np.searchsorted(ring.bounds, keys[[0, -1]], side="right") - 1]
            if owners[0] != self.server or owners[1] != self.server:
                raise ValueError(
                    f"keys [{int(keys[0])}, {int(keys[-1])}] are not all in the ranges of "
                    f"server {self.server} (ring version {ring.version})")
        if msg.op != Op.PULL:
            vdim = self.stores[msg.table].vdim
            nvals = 0 if msg.vals is None else msg.vals.size
            if nvals != keys.size * vdim:
                raise ValueError(f"{nvals} values for {keys.size} keys of vdim {vdim}")

    def _raw_bench(self, msg: Message) -> None:
        """Benchmarks: once every worker asked, serve ``aux`` raw MPI exchanges
        with all of them at once (``aux2`` bytes in, meta bytes out each), so
        they can measure plain MPI next to kv between the same ranks."""
        self.raw_sessions.append(msg)
        if len(self.raw_sessions) < self.po.num_workers:
            return
        sessions, self.raw_sessions = self.raw_sessions, []
        self.po.van.raw_serve([m.sender for m in sessions], [m.aux2 for m in sessions],
                              [int(m.meta.decode()) for m in sessions], sessions[0].aux)
