"""KVWorker: nonblocking push, pull and pushpull of sorted uint64 keys.

Each call slices the keys by the ring (one ``searchsorted``), sends one
message per server and returns a timestamp at once; ``wait(ts)`` serves
messages until every server answered, and returns the pulled values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..postoffice import Postoffice
from ..ring import check_keys
from ..transport import Message, Op


class KVError(RuntimeError):
    """A server refused a request."""


@dataclass
class _Pending:
    op: int
    keys: np.ndarray
    out: np.ndarray | None
    # server rank -> [(start, stop), ...] positions of its segments in ``keys``
    segments: dict[int, list[tuple[int, int]]]
    waiting: set[int]
    started: float = field(default_factory=time.monotonic)
    error: str | None = None


class KVWorker:
    """The worker side of one table."""

    _next_ts = 0  # timestamps are unique per process, across tables

    def __init__(self, po: Postoffice, table: str):
        self.po = po
        self.table = po.tables[po.table_ids[table]]
        self.table_id = po.table_ids[table]
        self.vdim = self.table.vdim
        self.dtype = self.table.np_dtype
        self._pending: dict[int, _Pending] = {}
        self.keys_sent = 0
        po.clients[self.table_id] = self._handle_reply

    # ---- requests ------------------------------------------------------------
    def push(self, keys: np.ndarray, vals: np.ndarray) -> int:
        """Send ``vals`` (n, vdim) for sorted unique ``keys``; returns a timestamp."""
        return self._request(Op.PUSH, keys, vals, None)

    def pull(self, keys: np.ndarray, out: np.ndarray | None = None) -> int:
        """Ask for the values of ``keys``; ``wait(ts)`` returns them (in ``out``
        if given, shape (n, vdim))."""
        return self._request(Op.PULL, keys, None, out)

    def pushpull(self, keys: np.ndarray, vals: np.ndarray,
                 out: np.ndarray | None = None) -> int:
        """Push, then pull the updated values of the same keys, in one round trip."""
        return self._request(Op.PUSHPULL, keys, vals, out)

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

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ---- internals -------------------------------------------------------------
    def _request(self, op: int, keys: np.ndarray, vals: np.ndarray | None,
                 out: np.ndarray | None) -> int:
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
        ts = KVWorker._next_ts
        KVWorker._next_ts += 1
        segments: dict[int, list[tuple[int, int]]] = {}
        for server, segs in self.po.ring.slice_by_server(keys).items():
            rank = self.po.server_rank(server)
            segments[rank] = [(a, b) for _, a, b in segs]
            msg = Message(op=op, table=self.table_id, ts=ts,
                          keys=[keys[a:b] for a, b in segments[rank]],
                          vals=None if vals is None else [vals[a:b] for a, b in segments[rank]],
                          vdim=self.vdim)
            self.po.send(rank, msg)
        self._pending[ts] = _Pending(op, keys, out, segments, set(segments))
        self.keys_sent += n
        return ts

    def _handle_reply(self, msg: Message) -> None:
        pending = self._pending.get(msg.ts)
        if pending is None or msg.sender not in pending.waiting:
            raise RuntimeError(f"unexpected {Op(msg.op).name} ts={msg.ts} from rank "
                               f"{msg.sender} on table {self.table.name!r}")
        if msg.op == Op.ERROR:
            pending.error = f"server rank {msg.sender}: {msg.meta.decode()}"
        elif msg.op == Op.PULL_REPLY:
            offset = 0
            for a, b in pending.segments[msg.sender]:
                pending.out[a:b] = msg.vals[offset: offset + b - a]
                offset += b - a
        pending.waiting.discard(msg.sender)

    def _describe(self, ts: int, pending: _Pending) -> str:
        parts = []
        for rank in sorted(pending.waiting):
            a = pending.segments[rank][0][0]
            b = pending.segments[rank][-1][1]
            lo, hi = int(pending.keys[a]), int(pending.keys[b - 1])
            parts.append(f"server rank {rank} ({self.po.layout.describe(rank)}) for keys "
                         f"[{lo:#x}, {hi:#x}]")
        return (f"{Op(pending.op).name} ts={ts} on table {self.table.name!r}: no reply from "
                + ", ".join(parts))
