"""KVWorker: nonblocking push, pull and pushpull of sorted uint64 keys.

Each call slices the keys by the ring (one ``searchsorted``), sends one
message per server and returns a timestamp at once; ``wait(ts)`` serves
messages until every server answered, and returns the pulled values.

The arrays given to a request are sent without a copy and kept until the
request is answered: do not change them before ``wait(ts)``. When a server
dies and the ring changes, the parts of unanswered requests that went to it
are sent again, with the same timestamp, to the new owners of their keys;
servers that already applied them (as replicas) do not apply them twice.

Keys are checked here, once (:func:`mpips.keys.check_keys`), and every
message says so in its header (``FLAG_KEYS_CHECKED``): the server trusts it.
A request of a task carries the task's timestamp (``task=``), which servers
use to hold pulls behind the aggregated pushes of earlier tasks.

A key list drawn from a larger set known in advance (a minibatch's keys,
from its data partition's) can go as positions: ``ks = register(keys)`` once,
then requests of ``ks.subset(positions)``; the servers then look nothing up
(:mod:`mpips.kv.keyset`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..filters import WorkerFilters
from ..keys import check_keys
from ..postoffice import Postoffice
from ..transport import Message, Op
from ..transport.message import FLAG_AGGREGATE, FLAG_KEYS_CHECKED, FLAG_POSITIONS, task_tag
from .keyset import KeySet, KeySubset

Keys = np.ndarray | KeySubset


def _chunks(lo: int, hi: int, size: int):
    """(start, stop, chunk index) of [lo, hi) cut at multiples of ``size`` (0: uncut)."""
    if size <= 0:
        yield lo, hi, 0
        return
    a = lo
    while a < hi:
        b = min(hi, (a // size + 1) * size)
        yield a, b, a // size
        a = b


def wire_positions(positions: np.ndarray, offset: int) -> np.ndarray:
    """Key set positions less a part's offset, as the uint64 keys section
    (int64 positions of a part at offset 0: a view, no pass)."""
    if positions.dtype != np.int64:
        wide = positions.astype(np.int64)
        if offset:
            wide -= np.int64(offset)
        return wide.view(np.uint64)
    if offset == 0:
        return positions.view(np.uint64)
    return (positions - np.int64(offset)).view(np.uint64)


class KVError(RuntimeError):
    """A server refused a request."""


@dataclass
class _Pending:
    op: int
    keys: np.ndarray
    vals: np.ndarray | None
    out: np.ndarray | None
    # part id -> (server rank, [(start, stop), ...] positions of its segments in keys)
    parts: dict[int, tuple[int, list[tuple[int, int]]]] = field(default_factory=dict)
    waiting: set[int] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    error: str | None = None
    tag: int = 0  # header aux: the task's timestamp + 1 (consistency), 0 for none
    flags: int = 0
    one_off: bool = False  # a flush: its key list is not worth caching
    subset: KeySubset | None = None  # a request of a registered key set


class KVWorker:
    """The worker side of one table."""

    _next_ts = 0  # timestamps are unique per process, across tables
    _next_keyset = 1  # key set ids too (0: none)

    def __init__(self, po: Postoffice, table: str, aggregate: bool = False):
        self.po = po
        # consistency: with ``aggregate`` the servers sum one push per task
        # from every worker and apply it once (pushes then need ``task=``).
        self.aggregate = aggregate
        self.table = po.tables[po.table_ids[table]]
        self.table_id = po.table_ids[table]
        self.vdim = self.table.vdim
        self.dtype = self.table.np_dtype
        self.filters = WorkerFilters(po, self.table_id)
        self._pending: dict[int, _Pending] = {}
        self.keys_sent = 0
        self.chunk_keys = po.cfg.kv.chunk_keys
        po.clients[self.table_id] = self._handle_reply
        po.ring_listeners.append(self._resend)
        po.task_boundary.append(self.finish_task)
        po.add_stats(("worker", table), self.filters.stats)
        self._next_part = 0

    # ---- key sets ---------------------------------------------------------------
    def register(self, keys: np.ndarray) -> KeySet:
        """Register sorted unique ``keys`` with their servers; requests of
        ``ks.subset(positions)`` then travel as positions, and the servers
        look nothing up. The servers store the keys (at the handle's initial
        value): register keys that will be pushed. ``forget`` frees them."""
        if self.table.store is not None:
            raise ValueError(f"table {self.table.name!r} has a store of its own: key sets "
                             "need the default sorted store")
        ks = KeySet(check_keys(keys), KVWorker._next_keyset, self.table.name)
        KVWorker._next_keyset += 1
        self._register(ks)
        return ks

    def forget(self, ks: KeySet) -> None:
        """The servers drop their parts of ``ks`` (requests of it may still be
        in flight: MPI keeps their order, so they are served first)."""
        for rank in ks.servers:
            if rank not in self.po.van.dead:
                self.po.send(rank, Message(op=Op.KEYSET_DROP, table=self.table_id,
                                           keyset=ks.id), True)
        ks.ring_version, ks.servers = -1, set()

    def _register(self, ks: KeySet) -> None:
        """Send each server its part of ``ks`` under the current ring."""
        ring = self.po.ring
        offsets = np.zeros(ring.num_ranges, dtype=np.int64)
        servers = set()
        for server, segs in sorted(ring.slice_by_server(ks.keys).items()):
            local = 0
            for r, a, b in segs:
                offsets[r] = a - local
                local += b - a
            rank = self.po.server_rank(server)
            self.po.send(rank, Message(op=Op.KEYSET, table=self.table_id, keyset=ks.id,
                                       flags=FLAG_KEYS_CHECKED,
                                       keys=[ks.keys[a:b] for _, a, b in segs]), True)
            servers.add(rank)
        ks.offsets, ks.servers, ks.ring_version = offsets, servers, ring.version

    # ---- requests ------------------------------------------------------------
    def push(self, keys: Keys, vals: np.ndarray, task: int | None = None) -> int:
        """Send ``vals`` (n, vdim) for sorted unique ``keys``; returns a timestamp.
        ``task``: the timestamp of the task the push belongs to (``task["ts"]``)."""
        return self._request(Op.PUSH, keys, vals, None, task)

    def pull(self, keys: Keys, out: np.ndarray | None = None,
             task: int | None = None) -> int:
        """Ask for the values of ``keys``; ``wait(ts)`` returns them (in ``out``
        if given, shape (n, vdim)). A pull of task t sees every aggregated push
        of the tasks before t."""
        return self._request(Op.PULL, keys, None, out, task)

    def pushpull(self, keys: Keys, vals: np.ndarray,
                 out: np.ndarray | None = None, task: int | None = None) -> int:
        """Push, then pull the updated values of the same keys, in one round trip."""
        return self._request(Op.PUSHPULL, keys, vals, out, task)

    def flush(self) -> int | None:
        """Push, unfiltered, what the significant and KKT filters hold back;
        returns the push's timestamp, or None when nothing is held."""
        held = self.filters.take_held()
        if held is None:
            return None
        keys, sums = held
        return self._request(Op.PUSH, keys, sums.astype(self.dtype), None, None,
                             entry_filters=False)

    def finish_task(self) -> None:
        """A task boundary (the postoffice calls it before a task is reported
        done, a checkpoint or the job's end): push what filters hold back,
        then wait until every request is answered."""
        if not self.aggregate:  # an aggregated push belongs to a task: none here
            self.flush()
        self.wait_all()

    def wait(self, ts: int, timeout: float | None = None) -> np.ndarray | None:
        """Block until request ``ts`` is answered; return pulled values if any."""
        pending = self._pending.get(ts)
        if pending is None:
            raise KeyError(f"no request with timestamp {ts} on table {self.table.name!r}")
        self.po.wait_until(lambda: not pending.waiting, lambda: self._describe(ts, pending),
                           timeout)
        del self._pending[ts]
        if pending.error:
            raise KVError(f"table {self.table.name!r} request {ts}: {pending.error}")
        return pending.out

    def wait_all(self, timeout: float | None = None) -> None:
        for ts in sorted(self._pending):
            self.wait(ts, timeout)

    def ready(self, ts: int) -> bool:
        """Whether request ``ts`` is answered (``wait(ts)`` would not block)."""
        return not self._pending[ts].waiting

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ---- internals -------------------------------------------------------------
    def _request(self, op: int, keys: Keys, vals: np.ndarray | None,
                 out: np.ndarray | None, task: int | None,
                 entry_filters: bool = True) -> int:
        subset = None
        if isinstance(keys, KeySubset):  # checked by KeySet.subset
            subset, keys = keys, keys.keys
            ks = subset.keyset
            if ks.table != self.table.name:
                raise ValueError(f"key set of table {ks.table!r} used on table "
                                 f"{self.table.name!r}")
            if not ks.registered:
                raise ValueError(f"key set {ks.id} of table {ks.table!r} was forgotten: "
                                 "register its keys again")
            if ks.ring_version != self.po.ring.version:
                self._register(ks)  # the ring changed since it was registered
        else:
            keys = check_keys(keys)
        n = keys.size
        if vals is not None:
            vals = np.asarray(vals)
            if vals.size != n * self.vdim:
                raise ValueError(f"table {self.table.name!r}: {vals.size} values for {n} "
                                 f"keys of vdim {self.vdim}")
            vals = vals.reshape(n, self.vdim).astype(self.dtype, copy=False)
        if op != Op.PUSH:
            if out is None:
                out = np.empty((n, self.vdim), dtype=self.dtype)
            elif out.shape != (n, self.vdim) or out.dtype != self.dtype:
                raise ValueError(f"out must have shape {(n, self.vdim)} and dtype "
                                 f"{self.dtype}, got {out.shape} {out.dtype}")
        if op == Op.PUSH and entry_filters:  # kkt/significant: once a request
            vals = self.filters.filter_entries(keys, vals)
        ts = KVWorker._next_ts
        KVWorker._next_ts += 1
        pending = _Pending(op, keys, vals, out, one_off=not entry_filters, subset=subset)
        self._tag(pending, task)
        self._pending[ts] = pending
        self._send_parts(ts, pending, [(0, n)])
        self.keys_sent += n
        return ts

    def _send_parts(self, ts: int, pending: _Pending, spans: list[tuple[int, int]]) -> None:
        """Send the keys in ``spans`` of a request to their owners: one message
        per (chunk, server), each part under an id of its own. Chunks are the
        request's positions cut at multiples of ``chunk_keys`` (the same cut on
        a resend, so servers recognise a chunk they already applied)."""
        fc = self.filters
        aggregate = bool(pending.flags & FLAG_AGGREGATE)  # one message per server and task
        by_dest: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for lo, hi in spans:
            for a, b, chunk in _chunks(lo, hi, 0 if aggregate else self.chunk_keys):
                for server, segs in self.po.ring.slice_by_server(pending.keys[a:b]).items():
                    by_dest.setdefault((chunk, server), []).extend(
                        (a + x, a + y, r) for r, x, y in segs)
        if aggregate and not pending.parts:  # first send: every live server counts
            # one message per worker, so empty ones go too
            for server in self.po.ring.live_servers:
                by_dest.setdefault((0, server), [])
        vals = pending.vals
        # positions into the servers' parts of a key set registered under
        # this ring (a resend after a ring change goes by keys)
        sub = pending.subset
        by_position = (sub is not None and not aggregate
                       and sub.keyset.ring_version == self.po.ring.version)
        # batching: a small request while others are in flight may wait for
        # the next ones (the van sends them together when this rank waits)
        defer = len(self._pending) > 1
        for (chunk, server), segs in sorted(by_dest.items()):
            segs.sort()  # a message's keys must stay sorted: spans may come in any order
            rank = self.po.server_rank(server)
            part = self._next_part
            self._next_part += 1
            if by_position:
                offsets = sub.keyset.offsets
                keys = [wire_positions(sub.positions[a:b], int(offsets[r]))
                        for a, b, r in segs]
                flags, keyset = pending.flags | FLAG_KEYS_CHECKED | FLAG_POSITIONS, \
                    sub.keyset.id
            else:
                keys = [pending.keys[a:b] for a, b, _ in segs]
                flags, keyset = pending.flags | FLAG_KEYS_CHECKED, 0
            self.po.send(rank, fc.encode(Message(  # filters: keys and values as sent
                op=pending.op, table=self.table_id, ts=ts, aux2=part, aux=pending.tag,
                flags=flags, chunk=chunk, keyset=keyset, keys=keys,
                vals=None if vals is None else [vals[a:b] for a, b, _ in segs],
                vdim=self.vdim), rank, cache_keys=not pending.one_off), defer)
            pending.parts[part] = (rank, [(a, b) for a, b, _ in segs])
            pending.waiting.add(part)

    def _tag(self, pending: _Pending, task: int | None) -> None:
        """Consistency: the task timestamp, and the aggregate flag on pushes."""
        pending.tag = task_tag(task)
        if self.aggregate and pending.op != Op.PULL:
            if pending.op != Op.PUSH or task is None:
                raise ValueError(f"table {self.table.name!r} aggregates pushes per task: "
                                 "use push (not pushpull) with task=task['ts']")
            pending.flags = FLAG_AGGREGATE

    def _resend(self, old, new) -> None:
        """After a failover: send again what dead servers left unanswered."""
        dead = self.po.van.dead
        for ts, pending in self._pending.items():
            lost = [p for p in pending.waiting if pending.parts[p][0] in dead]
            spans = [seg for p in lost for seg in pending.parts[p][1]]
            pending.waiting.difference_update(lost)
            if spans:
                self._send_parts(ts, pending, spans)

    def _handle_reply(self, msg: Message) -> None:
        pending = self._pending.get(msg.ts)
        if pending is None or msg.aux2 not in pending.waiting:
            raise RuntimeError(f"unexpected {Op(msg.op).name} ts={msg.ts} part {msg.aux2} "
                               f"from rank {msg.sender} on table {self.table.name!r}")
        msg = self.filters.decode_reply(msg)  # values as the server had them
        if msg.op == Op.ERROR:
            pending.error = f"server rank {msg.sender}: {msg.meta.decode()}"
        elif msg.op == Op.PULL_REPLY:
            offset = 0
            for a, b in pending.parts[msg.aux2][1]:
                pending.out[a:b] = msg.vals[offset: offset + b - a]
                offset += b - a
        pending.waiting.discard(msg.aux2)
        if not pending.waiting and pending.out is not None:
            self.filters.observe(pending.keys, pending.out)  # KKT: which weights are zero

    def _describe(self, ts: int, pending: _Pending) -> str:
        parts = []
        for part in sorted(pending.waiting):
            rank, segs = pending.parts[part]
            lo, hi = int(pending.keys[segs[0][0]]), int(pending.keys[segs[-1][1] - 1])
            parts.append(f"server rank {rank} ({self.po.layout.describe(rank)}) for keys "
                         f"[{lo:#x}, {hi:#x}]")
        return (f"{Op(pending.op).name} ts={ts} on table {self.table.name!r}: no reply from "
                + ", ".join(parts))
