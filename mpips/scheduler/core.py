"""The scheduler's main loop: barriers, progress, the end of the job.

It releases barriers when every live rank of the group has arrived, sums the
progress counters workers report and prints one line at a steady interval.
When every live worker is done it stops the servers, collects their results,
and lets every rank finish together. Tasks (:mod:`.tasks`), failures
(:mod:`.failures`) and checkpoints (:mod:`.checkpoints`) are its parts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from ..app import App
from ..data.queue import partition_warning
from ..layout import WORKER
from ..postoffice import ALL, Postoffice
from ..status import write_status
from ..transport import Message, Op
from .checkpoints import Checkpoints
from .failures import Failover, JobFailed
from .progress import WorkerCounters, format_line
from .tasks import TaskDesk


class Scheduler:
    """Rank 0 of a job."""

    def __init__(self, po: Postoffice, app: App):
        self.po = po
        self.app = app
        self.interval = po.cfg.job.progress_interval
        self.arrived: dict[tuple[int, int], set[int]] = {}  # barrier -> live ranks in it
        self.last_release: dict[int, tuple[int, bytes]] = {}  # group -> (barrier, meta)
        self._targets: dict[int, tuple[int, list[int]]] = {}  # group -> (dead, ranks)
        self.counters = WorkerCounters()  # each worker's last report, summed as they come
        self.done: dict[int, dict[str, Any]] = {}
        self.stopped: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        po.events = self.events  # apps read them in finish (failover timings)
        for op, handler in ((Op.BARRIER, self._barrier), (Op.REPORT, self._report),
                            (Op.DONE, self._done), (Op.STOPPED, self._stopped),
                            (Op.EVENT, self._event)):
            po.on(op, handler)
        self.tasks = TaskDesk(self)
        self.failover = Failover(self)
        self.checkpoints = Checkpoints(self)

    # ---- the run ----------------------------------------------------------------
    def run(self) -> None:
        po = self.po
        t0 = time.monotonic()
        layout = po.layout
        ft = ("ULFM: failed ranks are survived" if po.van.fault_tolerant else
              "no ULFM: recovery is checkpoint/restart only")
        print(f"mpips: {po.cfg.job.name}: {layout.world_size} ranks on {layout.num_hosts} "
              f"host(s): 1 scheduler, {len(layout.servers)} servers, {len(layout.workers)} "
              f"workers; ring of {po.ring.num_ranges} ranges, replication "
              f"{po.ring.replication} (a range's copies on {po.ring.hosts_of_copies} "
              f"host(s); map in layout.json); {ft}; {po.van.library()}", flush=True)
        warning = partition_warning(self.tasks.queue, len(layout.workers))
        if warning:
            print(f"mpips: warning: {warning}", flush=True)
        ring = po.ring
        if ring.replication and ring.hosts_of_copies < ring.replication + 1:
            server_hosts = len(set(ring.hosts)) if ring.hosts else 1
            print(f"mpips: warning: replication {ring.replication} with servers on "
                  f"{server_hosts} host(s): some replicas share their owner's host, so "
                  "losing that host loses those ranges", flush=True)
        self._write_layout()
        write_status(po.cfg.job.output, "running", ranks=layout.world_size)
        if po.cfg.checkpoint.resume:
            self.checkpoints.resume()
        next_line = t0 + self.interval

        def watch() -> None:
            now = time.monotonic()
            self.failover.check_heartbeats(now)
            self.checkpoints.maybe_checkpoint(now)

        def tick() -> bool:
            nonlocal next_line
            watch()
            now = time.monotonic()
            if now < next_line:
                return self._all_done()
            if self.counters:
                self.print_progress(now - t0)
            next_line = now + self.interval
            return True

        while not self._all_done():
            po.wait_until(tick, lambda: "", timeout=float("inf"), idle=watch)
        self._check_complete()
        if self.counters:
            self.print_progress(time.monotonic() - t0, final=True)
        # a checkpoint still being written is finished first: its servers
        # write it from a thread that a stop would cut short
        po.wait_until(lambda: self.checkpoints.files is None,
                      lambda: "CHECKPOINTED from servers " + ", ".join(
                          str(r) for r in self.live(sorted(self.checkpoints.asked))
                          if r not in (self.checkpoints.files or {})))
        servers = self.live(po.layout.servers)
        for rank in servers:
            po.send(rank, Message(op=Op.STOP))
        po.wait_until(lambda: all(r in self.stopped for r in self.live(servers)),
                      lambda: "STOPPED from servers " + ", ".join(
                          str(r) for r in servers if r not in self.stopped))
        elapsed = time.monotonic() - t0
        self.tasks.write_log()  # before finish: an app may fold consistency.json in
        self.app.finish(po, [self.done[r] for r in self.live(layout.workers)],
                        [self.stopped[r] for r in self.live(layout.servers)], elapsed)
        for rank in self.live(layout.workers + layout.servers):
            po.send(rank, Message(op=Op.STOP))  # servers: the second, the job's end
        if po.van.liveness is not None:  # heard per host: which ranks sent beats
            received = po.van.liveness.heard.received
            po.event("heartbeats", messages=int(received.sum()),
                     senders=np.flatnonzero(received).tolist(), ranks=po.van.size)
        self.write_events()
        lost = sorted(po.van.dead)
        write_status(po.cfg.job.output, "done", seconds=round(elapsed, 3), lost=lost)
        print(f"mpips: {po.cfg.job.name}: done in {elapsed:.1f} s"
              + (f"; survived the loss of rank(s) {lost}" if lost else ""), flush=True)

    def _write_layout(self) -> None:
        """layout.json in the job's output: every rank's role and host (its
        index and name), and every range's owner and replicas (ranks and host
        indices)."""
        po, layout, ring = self.po, self.po.layout, self.po.ring
        names = po.van.hostnames
        ranks = [{"rank": r, "role": layout.role(r), "name": layout.describe(r),
                  "host": layout.hosts[r],
                  "hostname": names[layout.hosts[r]] if names else None}
                 for r in range(layout.world_size)]
        ranges = []
        for r in range(ring.num_ranges):
            lo, hi = ring.range_of(r)
            holders = [po.server_rank(s) for s in ring.holders(r)]
            ranges.append({"range": r, "lo": f"{lo:#x}", "hi": f"{hi:#x}",
                           "owner": holders[0], "replicas": holders[1:],
                           "hosts": [layout.hosts[h] for h in holders]})
        out = po.cfg.job.output
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "layout.json"), "w") as f:
            json.dump({"ring_version": ring.version, "ranks": ranks, "ranges": ranges}, f)

    def _check_complete(self) -> None:
        """A job whose workers are all gone, or that stopped short of its
        tasks, failed: it must not write results or say "done"."""
        workers = self.po.layout.workers
        if not self.live(workers):
            raise JobFailed(f"every worker is gone (ranks {list(workers)}): the job cannot "
                            "finish; restart it with --resume from the last checkpoint")
        queue = self.tasks.queue
        if queue is not None and not queue.finished:
            raise JobFailed(f"the workers stopped with {queue.tasks_done} task(s) done and "
                            "the work queue unfinished")

    def live(self, ranks) -> list[int]:
        """``ranks`` without the dead ones."""
        return [r for r in ranks if r not in self.po.van.dead]

    def _all_done(self) -> bool:
        return all(r in self.done for r in self.live(self.po.layout.workers))

    def print_progress(self, elapsed: float, final: bool = False) -> None:
        """One progress line: the app's fields from the workers' counters."""
        # the last line: the final totals summed afresh
        totals = self.counters.exact_totals() if final else self.counters.totals()
        if not totals:
            return
        fields = self.app.progress_fields(totals, elapsed)
        if self.tasks.clock is not None:
            fields.update(self.tasks.clock.progress_fields())
        print(format_line(elapsed, fields, self.po.cfg.job.log_format), file=sys.stdout,
              flush=True)

    # ---- messages ----------------------------------------------------------------
    def _barrier(self, msg: Message) -> None:
        key = (msg.flags, msg.aux)
        self.arrived.setdefault(key, set()).add(msg.sender)
        self._release_if_complete(key)

    def _members(self, group: int) -> int:
        """How many live ranks a barrier of ``group`` waits for: counted, not
        scanned (the dead are few)."""
        dead = self.po.van.dead
        if group == ALL:
            return self.po.van.size - 1 - sum(1 for r in dead if r != self.po.layout.scheduler)
        workers = self.po.layout.workers
        return len(workers) - sum(1 for r in dead if self.po.layout.role(r) == WORKER)

    def _release_if_complete(self, key: tuple[int, int]) -> None:
        """Release barrier ``key`` once every live member reached it: O(1) per
        arrival. The release goes down the host tree (one message per host:
        the leaders pass it on) and carries the workers that have died
        (usually none), not the members."""
        ranks = self.arrived[key]
        ranks -= self.po.van.dead  # arrived, then died: not waited for, not released
        if len(ranks) < self._members(key[0]):
            return
        dead = Message.jmeta(sorted(r for r in self.po.van.dead
                                    if self.po.layout.role(r) == WORKER))
        for r in self._release_targets(key[0]):
            self.po.send(r, Message(op=Op.RELEASE, flags=key[0], aux=key[1], meta=dead))
        self.last_release[key[0]] = (key[1], dead)
        del self.arrived[key]

    def _release_targets(self, group: int) -> list[int]:
        """Whom the scheduler sends a release of ``group`` itself (kept until
        a rank dies)."""
        dead = self.po.van.dead
        kept = self._targets.get(group)
        if kept is None or kept[0] != len(dead):
            kept = (len(dead), self.po.host_tree.direct_for(dead, self.po.barrier_member(group)))
            self._targets[group] = kept
        return kept[1]

    def releases_lost_with(self, leader: int) -> None:
        """A host leader died, maybe before it passed on the last release of
        a barrier: its ranks get each group's last release again (a repeat
        changes nothing)."""
        for group, (bid, dead) in self.last_release.items():
            member = self.po.barrier_member(group)
            for r in self.live(self.po.host_tree.reported_by(leader)):
                if member(r):
                    self.po.send(r, Message(op=Op.RELEASE, flags=group, aux=bid, meta=dead))

    def release_barriers(self) -> None:
        """After a failure: a barrier may now be complete without the dead."""
        for key in list(self.arrived):
            self._release_if_complete(key)

    def _report(self, msg: Message) -> None:
        self.counters.set(msg.sender, msg.json())

    def _done(self, msg: Message) -> None:
        self.done[msg.sender] = msg.json() or {}
        self.counters.set(msg.sender, self.done[msg.sender].get("counters", {}))

    def _stopped(self, msg: Message) -> None:
        self.stopped[msg.sender] = msg.json() or {}

    def _event(self, msg: Message) -> None:
        self.events.append(msg.json())

    def write_events(self) -> None:
        """The event log (failures, ring changes, checkpoints) to events.jsonl."""
        if not self.events:
            return
        out = self.po.cfg.job.output
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "events.jsonl"), "a") as f:
            for e in self.events:
                f.write(json.dumps(e) + "\n")
