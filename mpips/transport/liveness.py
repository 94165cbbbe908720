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

Beats are gathered per host, so that the scheduler hears O(hosts) messages
per interval, not O(ranks): on each host but the scheduler's, the lowest rank
is the host's leader; the other ranks of that host beat to it, and it sends
the scheduler one report per interval, how long ago it heard each of them
(:class:`mpips.transport.hosts.HostTree`). Ranks of the scheduler's host beat to it directly. A
leader that fails is left for the scheduler: its ranks beat to the scheduler
from then on (on the first failed send, or when the van learns of the
failure), and the scheduler gives them a full timeout more before it takes
their silence for death.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from mpi4py import MPI

from .hosts import HeardTable, HostTree

TAG_BEAT = 11
TAG_HOST = 12  # a leader's report: float32 seconds since it heard each of its host's ranks
_FAILED = {getattr(MPI, n) for n in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
           if hasattr(MPI, n)}


def thread_level_ok() -> bool:
    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


class Heartbeats:
    """One rank's side: beats to its host's leader (or the scheduler), a
    leader's reports, or (on the scheduler) the record of when each rank was
    last heard and how many messages brought it (:attr:`heard`)."""

    def __init__(self, comm: MPI.Comm, scheduler: int, interval: float,
                 hosts: list[int] | None = None):
        self.comm = comm.Dup()  # collective: every rank creates its Heartbeats at start
        self.rank = self.comm.Get_rank()
        self.scheduler = scheduler
        self.interval = interval
        self.plan = HostTree(hosts or [0] * self.comm.Get_size(), scheduler)
        self.target = self.plan.target(self.rank)
        self.members = self.plan.reported_by(self.rank)
        self.heard = HeardTable(self.plan, self.comm.Get_size())  # scheduler, leaders
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        target = (self._listen if self.rank == self.scheduler else
                  self._lead if self.members else self._beat)
        self._thread = threading.Thread(target=target, name="mpips-heartbeats", daemon=True)
        self._thread.start()

    def peer_failed(self, rank: int) -> None:
        """The van learnt that ``rank`` failed: if it was this rank's
        leader, beat to the scheduler from now on."""
        if rank == self.target and rank != self.scheduler:
            self.target = self.scheduler

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
        sent_to = self.target
        while not self._stop.is_set():
            try:
                if sent_to != self.target:  # the leader failed: the last beat may hang
                    pending, sent_to = None, self.target
                # one beat in flight at most: a receiver that stopped
                # receiving must not pile them up
                if pending is None or pending.Test():
                    pending = self.comm.Isend([byte, MPI.BYTE], self.target, TAG_BEAT)
                    self.beats += 1
            except MPI.Exception:
                if self.target == self.scheduler:
                    return  # the scheduler is gone: the main thread finds out and says so
                self.target, pending = self.scheduler, None  # the leader is: go direct
                continue
            self._stop.wait(self.interval)

    def _lead(self) -> None:
        """A host's leader: hear its host's ranks, report them with its own
        beat once an interval."""
        status = MPI.Status()
        byte = np.empty(1, dtype=np.uint8)
        members = np.asarray(self.members, np.int64)
        idle = min(0.05, self.interval / 4)
        pending: MPI.Request | None = None
        next_report = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_report and (pending is None or pending.Test()):
                    ages = self.heard.ages(members, now)
                    pending = self.comm.Isend([ages, MPI.FLOAT], self.scheduler, TAG_HOST)
                    self.beats += 1
                    next_report = now + self.interval
                if not self.comm.Iprobe(MPI.ANY_SOURCE, TAG_BEAT, status):
                    self._stop.wait(idle)
                    continue
                source = status.Get_source()
                self.comm.Recv([byte, MPI.BYTE], source, TAG_BEAT)
                self.heard.beat(source, time.monotonic())
            except MPI.Exception as e:
                if not self._go_on_after(e):
                    return
                pending = None
                self._stop.wait(idle)

    def _listen(self) -> None:
        status = MPI.Status()
        byte = np.empty(1, dtype=np.uint8)
        # A short sleep between empty probes: beats come every ``interval``
        # from each rank; hearing one 50 ms late costs nothing.
        idle = min(0.05, self.interval / 4)
        while not self._stop.is_set():
            try:
                if not self.comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status):
                    self._stop.wait(idle)
                    continue
                source, tag = status.Get_source(), status.Get_tag()
                now = time.monotonic()
                if tag == TAG_HOST:
                    ages = np.empty(status.Get_count(MPI.FLOAT), dtype=np.float32)
                    self.comm.Recv([ages, MPI.FLOAT], source, TAG_HOST)
                    self.heard.report(source, ages, now)
                else:
                    self.comm.Recv([byte, MPI.BYTE], source, tag)
                self.heard.beat(source, now)
            except MPI.Exception as e:
                if not self._go_on_after(e):
                    return
                self._stop.wait(idle)

    def _go_on_after(self, error: MPI.Exception) -> bool:
        """Whether a receiving thread goes on after ``error``: yes when a
        rank it hears from failed (acknowledged, so that its probes go on
        hearing the others), no for anything else."""
        if error.Get_error_class() not in _FAILED:
            return False
        try:
            self.comm.Ack_failed()
        except MPI.Exception:
            return False
        return True
