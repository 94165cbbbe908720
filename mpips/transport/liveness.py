"""Heartbeats from a thread of every rank, on a communicator of their own.

A rank is alive while its process runs, not only while it waits for
messages: a worker computing for minutes must not be taken for gone. So each
rank but the scheduler runs a daemon thread that sends one byte to the
scheduler every ``interval`` seconds, and the scheduler runs a thread that
receives them and records when each rank was last heard. The threads only
take the GIL for a few microseconds per beat; numpy releases it in long
operations, and the interpreter hands it over every few milliseconds in
Python code, so beats keep going while the main thread computes. A process
that is stopped (SIGSTOP, a frozen host) or dead falls silent.

The beats travel on a duplicate of the job's communicator, so that they never
mix with data messages or with the main thread's probes. This needs
``MPI_THREAD_MULTIPLE`` (mpi4py asks for it; Open MPI and MPICH give it):
without it :func:`thread_level_ok` is False and ranks fall back to beats sent
from their wait loops (the van's caller does that).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from mpi4py import MPI

TAG_BEAT = 11
_FAILED = {getattr(MPI, n) for n in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
           if hasattr(MPI, n)}


def thread_level_ok() -> bool:
    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


class Heartbeats:
    """One rank's side: beats to the scheduler, or (on the scheduler) the
    record of when each rank was last heard (:attr:`last_heard`)."""

    def __init__(self, comm: MPI.Comm, scheduler: int, interval: float):
        self.comm = comm.Dup()  # collective: every rank creates its Heartbeats at start
        self.rank = self.comm.Get_rank()
        self.scheduler = scheduler
        self.interval = interval
        self.last_heard: dict[int, float] = {}  # scheduler: rank -> time.monotonic()
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        target = self._listen if self.rank == self.scheduler else self._beat
        self._thread = threading.Thread(target=target, name="mpips-heartbeats", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (before MPI is finalised)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _beat(self) -> None:
        byte = np.zeros(1, dtype=np.uint8)
        pending: MPI.Request | None = None
        while not self._stop.is_set():
            try:
                # one beat in flight at most: a scheduler that stopped
                # receiving must not pile them up
                if pending is None or pending.Test():
                    pending = self.comm.Isend([byte, MPI.BYTE], self.scheduler, TAG_BEAT)
                    self.beats += 1
            except MPI.Exception:
                return  # the scheduler is gone: the main thread finds out and says so
            self._stop.wait(self.interval)

    def _listen(self) -> None:
        status = MPI.Status()
        byte = np.empty(1, dtype=np.uint8)
        # A short sleep between empty probes: beats come every ``interval``
        # from each rank; hearing one 50 ms late costs nothing.
        idle = min(0.05, self.interval / 4)
        while not self._stop.is_set():
            try:
                if not self.comm.Iprobe(MPI.ANY_SOURCE, TAG_BEAT, status):
                    self._stop.wait(idle)
                    continue
                source = status.Get_source()
                self.comm.Recv([byte, MPI.BYTE], source, TAG_BEAT)
                self.last_heard[source] = time.monotonic()
            except MPI.Exception as e:
                if e.Get_error_class() not in _FAILED:
                    return
                try:
                    self.comm.Ack_failed()  # a dead rank: go on hearing the others
                except MPI.Exception:
                    return
                self._stop.wait(idle)
