"""The scheduler (rank 0): barriers, progress, and the end of the job.

It releases barriers when every expected rank has arrived, sums the progress
counters workers report and prints one line at a steady interval, and when
every worker is done it stops the servers, collects their results, and lets
every rank finish together.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .apps.base import App
from .postoffice import Postoffice
from .transport import Message, Op


def _task(d: dict[str, Any]):
    from .data.queue import Task
    return Task(d["epoch"], d["partition"], d["path"], d["attempt"])


class Scheduler:
    def __init__(self, po: Postoffice, app: App):
        self.po = po
        self.app = app
        self.interval = po.cfg.job.progress_interval
        self.arrived: dict[tuple[int, int], list[int]] = {}
        self.counters: dict[int, dict[str, float]] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.stopped: dict[int, dict[str, Any]] = {}
        po.on(Op.BARRIER, self._barrier)
        po.on(Op.REPORT, self._report)
        po.on(Op.DONE, self._done)
        po.on(Op.STOPPED, self._stopped)
        po.on(Op.TASK_REQ, self._task_request)
        self.queue = app.work_queue()
        self.waiting_for_task: list[int] = []

    def run(self) -> None:
        po = self.po
        t0 = time.monotonic()
        layout = po.layout
        print(f"mpips: {po.cfg.job.name}: {layout.world_size} ranks on {layout.num_hosts} "
              f"host(s): 1 scheduler, {len(layout.servers)} servers, {len(layout.workers)} "
              f"workers; ring of {po.ring.num_ranges} ranges, replication "
              f"{po.ring.replication}; {po.van.library()}", flush=True)
        next_line = t0 + self.interval
        nworkers = len(layout.workers)

        def tick() -> bool:
            nonlocal next_line
            now = time.monotonic()
            if now < next_line:
                return len(self.done) == nworkers
            if self.counters:
                self._print_progress(now - t0)
            next_line = now + self.interval
            return True

        while len(self.done) < nworkers:
            po.wait_until(tick, lambda: "", timeout=float("inf"))
        if self.counters:
            self._print_progress(time.monotonic() - t0)  # the last line: final totals
        for rank in layout.servers:
            po.send(rank, Message(op=Op.STOP))
        po.wait_until(lambda: len(self.stopped) == len(layout.servers),
                      lambda: "STOPPED from servers " + ", ".join(
                          str(r) for r in layout.servers if r not in self.stopped))
        elapsed = time.monotonic() - t0
        self.app.finish(po, [self.done[r] for r in layout.workers],
                        [self.stopped[r] for r in layout.servers], elapsed)
        for rank in layout.workers:
            po.send(rank, Message(op=Op.STOP))
        print(f"mpips: {po.cfg.job.name}: done in {elapsed:.1f} s", flush=True)

    def _print_progress(self, elapsed: float) -> None:
        totals: dict[str, float] = {}
        for c in self.counters.values():
            for k, v in c.items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0.0) + v
        if not totals:
            return
        line = self.app.progress_line(totals, elapsed)
        print(f"[{elapsed:7.1f}s] {line}", file=sys.stdout, flush=True)

    def _barrier(self, msg: Message) -> None:
        key = (msg.flags, msg.aux)
        ranks = self.arrived.setdefault(key, [])
        ranks.append(msg.sender)
        if len(ranks) == msg.aux2:
            for r in ranks:
                self.po.send(r, Message(op=Op.RELEASE, flags=msg.flags, aux=msg.aux))
            del self.arrived[key]

    def _task_request(self, msg: Message) -> None:
        if self.queue is None:
            raise RuntimeError(f"rank {msg.sender} asked for a task, but app "
                               f"{self.app.name!r} has no work queue")
        done = msg.json()
        worker = msg.sender
        if done:
            self.queue.done(worker, _task(done))
        self.waiting_for_task.append(worker)
        # A done report may open the next epoch for workers already waiting.
        still = []
        for w in self.waiting_for_task:
            task = self.queue.next(w)
            if task is None and not self.queue.finished:
                still.append(w)  # epoch barrier: answer once the epoch is done
                continue
            meta = b"" if task is None else Message.jmeta(
                {"epoch": task.epoch, "partition": task.partition, "path": task.path,
                 "attempt": task.attempt})
            self.po.send(w, Message(op=Op.TASK, meta=meta))
        self.waiting_for_task = still

    def _report(self, msg: Message) -> None:
        self.counters[msg.sender] = msg.json()

    def _done(self, msg: Message) -> None:
        self.done[msg.sender] = msg.json() or {}
        self.counters[msg.sender] = self.done[msg.sender].get("counters", {})

    def _stopped(self, msg: Message) -> None:
        self.stopped[msg.sender] = msg.json() or {}
