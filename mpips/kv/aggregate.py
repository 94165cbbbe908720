"""Server-side aggregation of one task's pushes (synchronous semantics), the
kv half of consistency: the scheduler decides when a task starts
(:mod:`mpips.consistency`), the servers make a task's update one update.

A worker tags a request with its task's timestamp (``push(..., task=t)``:
header ``aux = t + 1``; 0 means untagged) and marks a push to be aggregated
(``flags`` bit ``FLAG_AGGREGATE``). An aggregated push of task t goes to *every* live
server, empty where the worker has no keys, so each server knows when it has
one from every live worker. It then sums them (union of keys; per key in
worker-rank order, so the sum is the same whatever order they arrived in),
applies the table's handle once, and only then acknowledges every
contributor: an acknowledged aggregated push is applied.

A pull (or pushpull) tagged t waits while this server still collects an
aggregated push of an earlier task, or of task t that this worker already
contributed to (read your own writes): a pull tagged t + 1 sees the whole
update of task t. Untagged requests and plain tagged pushes are served at
once (eventual).

Failover: resends of an aggregated push to a promoted replica are collected
like first sends; a group half-collected on a server that dies is rebuilt from
the resends (nothing was acknowledged). Replicas get the aggregated rows once
per contributor, so each records every contributor's request as applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..transport import Message, Op
from ..transport.message import FLAG_AGGREGATE, task_of

if TYPE_CHECKING:
    from .server import KVServer


@dataclass
class _Group:
    """The aggregated pushes of one (table, task) collected so far."""

    parts: dict[int, list[Message]] = field(default_factory=dict)  # sender -> messages
    started: float = field(default_factory=time.monotonic)


class SyncAggregator:
    """Collects aggregated pushes and holds tagged pulls for one server."""

    def __init__(self, server: KVServer):
        self.server = server
        self.po = server.po
        self.groups: dict[tuple[int, int], _Group] = {}
        self.held_pulls: list[Message] = []
        # Called as listener(table, task) after an aggregated update is applied.
        self.listeners: list[Callable[[int, int], None]] = []
        self.applied_groups = 0

    def intercept(self, msg: Message) -> bool:
        """Take ``msg`` over (True) if it is an aggregated push or a pull that
        must wait; the server serves everything else as before."""
        t = task_of(msg)
        if t is None:
            return False
        if msg.op == Op.PUSH and msg.flags & FLAG_AGGREGATE:
            self._collect(msg, t)
            return True
        if msg.op != Op.PUSH and self._must_wait(msg.table, t, msg.sender):
            self.held_pulls.append(msg)
            return True
        return False

    def _must_wait(self, table: int, t: int, sender: int) -> bool:
        return any(tab == table and (s < t or (s == t and sender in g.parts))
                   for (tab, s), g in self.groups.items())

    def _collect(self, msg: Message, t: int) -> None:
        kept = msg  # the van receives every message into a fresh buffer: keep it
        group = self.groups.setdefault((msg.table, t), _Group())
        group.parts.setdefault(msg.sender, []).append(kept)
        if len(group.parts) >= len(self.po.live_workers()):
            self._apply(msg.table, t, self.groups.pop((msg.table, t)))

    def _apply(self, table: int, t: int, group: _Group) -> None:
        vdim = self.server.tables[table].vdim
        msgs = [m for s in sorted(group.parts) for m in group.parts[s]]
        keys = np.concatenate([m.keys for m in msgs]) if msgs else np.empty(0, np.uint64)
        vals = (np.concatenate([np.asarray(m.vals).reshape(-1, vdim) for m in msgs if
                                m.keys.size]) if keys.size else np.empty((0, vdim)))
        order = np.argsort(keys, kind="stable")  # stable: worker-rank order within a key
        keys, vals = keys[order], vals[order]
        firsts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else \
            np.empty(0, np.int64)
        sums = np.add.reduceat(vals, firsts, axis=0) if keys.size else vals
        self.server.apply_sum(table, keys[firsts], sums, msgs)
        self.applied_groups += 1
        for listener in self.listeners:
            listener(table, t)
        still, self.held_pulls = self.held_pulls, []
        for m in still:
            self.server.handle(m)
