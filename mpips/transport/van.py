"""The van: moves framed messages between ranks over nonblocking MPI calls.

This is the only module of mpips that talks to MPI.

* ``send`` is nonblocking (``Isend``). Small messages are packed into one
  buffer; large ones are sent straight from the caller's arrays with an MPI
  struct datatype over their addresses (a gather, no copy). Buffers stay
  referenced until the send completes.
* ``poll`` matches one message with ``Improbe`` and receives it with
  ``Mrecv`` into a fresh uint8 array that :func:`decode` views without copies.
* Idle ranks wait by polling with short sleeps: Open MPI's blocking calls
  busy-poll, which starves busy ranks when ranks outnumber cores.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from .message import Message, Op, decode, encode

TAG_DATA = 1
TAG_RAW = 2
# Below this many bytes a copy into one buffer is cheaper than a datatype.
GATHER_MIN_BYTES = 1 << 16


class TransportTimeout(TimeoutError):
    """A wait ran out of time; the message names what was awaited."""


class Van:
    """Framed nonblocking messaging over an MPI communicator."""

    def __init__(self, comm: MPI.Comm | None = None, idle_sleep: float = 2e-4):
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.idle_sleep = idle_sleep
        self._sends: list[tuple[MPI.Request, object, MPI.Datatype | None]] = []
        self._status = MPI.Status()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0

    # ---- sending -----------------------------------------------------------
    def send(self, dest: int, msg: Message) -> None:
        """Start sending ``msg`` to ``dest``; completes in the background."""
        msg.sender = self.rank
        parts = encode(msg)
        total = sum(p.nbytes for p in parts)
        if total < GATHER_MIN_BYTES or len(parts) == 1:
            buf = parts[0] if len(parts) == 1 else np.concatenate(parts)
            req = self.comm.Isend([buf, MPI.BYTE], dest, TAG_DATA)
            self._sends.append((req, buf, None))
        else:
            addrs = [MPI.Get_address(p) for p in parts]
            dtype = MPI.Datatype.Create_struct(
                [p.nbytes for p in parts], addrs, [MPI.BYTE] * len(parts)).Commit()
            req = self.comm.Isend([MPI.BOTTOM, 1, dtype], dest, TAG_DATA)
            self._sends.append((req, parts, dtype))
        self.bytes_sent += total
        self.messages_sent += 1
        if len(self._sends) > 64:
            self.progress()

    def progress(self) -> None:
        """Release the buffers of completed sends."""
        if not self._sends:
            return
        done = MPI.Request.Testsome([s[0] for s in self._sends])
        if done:
            finished = set(done)
            for i in done:
                dtype = self._sends[i][2]
                if dtype is not None:
                    dtype.Free()
            self._sends = [s for i, s in enumerate(self._sends) if i not in finished]

    def flush(self, timeout: float) -> bool:
        """Wait (politely) until all sends completed; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._sends:
            self.progress()
            if time.monotonic() > deadline:
                return False
            if self._sends:
                time.sleep(self.idle_sleep)
        return True

    # ---- receiving ---------------------------------------------------------
    def poll(self) -> Message | None:
        """Receive one waiting message, or None."""
        mprobe = self.comm.Improbe(MPI.ANY_SOURCE, TAG_DATA, self._status)
        if mprobe is None:
            self.progress()
            return None
        source = self._status.Get_source()
        buf = np.empty(self._status.Get_count(MPI.BYTE), dtype=np.uint8)
        mprobe.Recv([buf, MPI.BYTE])
        self.bytes_received += buf.size
        self.messages_received += 1
        return decode(buf, source)

    def wait_for(self, handle: Callable[[Message], bool], timeout: float,
                 what: Callable[[], str], idle: Callable[[], None] | None = None) -> None:
        """Poll and pass every message to ``handle`` until it returns True.

        Spins briefly, then sleeps up to ``idle_sleep`` between empty polls.
        Raises :class:`TransportTimeout` with ``what()`` after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        empty = 0
        while True:
            msg = self.poll()
            if msg is not None:
                empty = 0
                if handle(msg):
                    return
                continue
            if idle is not None:
                idle()
            empty += 1
            if empty > 20:
                if time.monotonic() > deadline:
                    raise TransportTimeout(f"timed out after {timeout:g} s: {what()}")
                time.sleep(min(self.idle_sleep, 1e-5 * empty))

    # ---- raw MPI, for the bandwidth baseline of benchmarks -----------------
    def raw_exchange(self, peers: list[int], out: list[np.ndarray],
                     inbox: list[np.ndarray]) -> None:
        """Send ``out[i]`` to and receive ``inbox[i]`` from each ``peers[i]``
        with plain Isend/Irecv on a tag of its own, and wait for all."""
        reqs = [self.comm.Irecv([b, MPI.BYTE], p, TAG_RAW)
                for p, b in zip(peers, inbox, strict=True)]
        reqs += [self.comm.Isend([b, MPI.BYTE], p, TAG_RAW)
                 for p, b in zip(peers, out, strict=True)]
        while not MPI.Request.Testall(reqs):
            time.sleep(0)

    def raw_serve(self, peers: list[int], nbytes_in: list[int], nbytes_out: list[int],
                  reps: int) -> None:
        """The server side of ``raw_exchange`` for several peers at once:
        ``reps`` times, receive from all, then send to all."""
        inbox = [np.empty(n, dtype=np.uint8) for n in nbytes_in]
        out = [np.zeros(n, dtype=np.uint8) for n in nbytes_out]
        for _ in range(reps):
            reqs = [self.comm.Irecv([b, MPI.BYTE], p, TAG_RAW)
                    for p, b in zip(peers, inbox, strict=True)]
            while not MPI.Request.Testall(reqs):
                time.sleep(0)
            reqs = [self.comm.Isend([b, MPI.BYTE], p, TAG_RAW)
                    for p, b in zip(peers, out, strict=True)]
            while not MPI.Request.Testall(reqs):
                time.sleep(0)

    # ---- job-wide ----------------------------------------------------------
    def host_ids(self) -> list[int]:
        """For each rank, an id of its host (the lowest rank sharing its memory).

        A collective: every rank must call it, once, at start-up.
        """
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        leader = node.allreduce(self.rank, op=MPI.MIN)
        node.Free()
        ids = np.empty(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([leader], dtype=np.int64), ids)
        return ids.tolist()

    def abort_all(self, text: str, grace: float = 1.0) -> None:
        """Tell every other rank the job failed, then give the sends a moment."""
        meta = text.encode()
        for r in range(self.size):
            if r != self.rank:
                try:
                    self.send(r, Message(op=Op.ABORT, meta=meta))
                except MPI.Exception:
                    pass
        self.flush(grace)

    def finalize_and_exit(self, code: int) -> None:
        """End the process without risking a hang in MPI_Finalize."""
        self.flush(2.0)
        sys.stdout.flush()
        sys.stderr.flush()
        if code == 0:
            try:
                MPI.Finalize()
            except MPI.Exception:
                pass
        os._exit(code)

    @staticmethod
    def library() -> str:
        return MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]

    @staticmethod
    def wtime() -> float:
        return MPI.Wtime()
