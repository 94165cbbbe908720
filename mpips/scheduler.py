"""The scheduler (rank 0): barriers, work queue, progress, failures, the end.

It releases barriers when every live rank of the group has arrived, hands
out partitions from the app's work queue, sums the progress counters workers
report and prints one line at a steady interval. It watches every rank: a
rank that MPI reports dead (ULFM) or that stays silent past the heartbeat
timeout is gone. A dead worker's tasks go back to the queue; a dead server's
ranges move to their first live successor, which holds a replica (a new ring
version, broadcast to every rank), and the servers then repair the replicas.
When every live worker is done it stops the servers, collects their results,
and lets every rank finish together.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from . import checkpoint as ckpt
from . import consistency
from .app import App
from .layout import SERVER, WORKER
from .postoffice import ALL, JobPreempted, Postoffice
from .ring import RingError
from .transport import Message, Op


def _by_worker_index(manifest: dict[str, Any], workers: tuple[int, ...]) -> dict[str, Any]:
    """The checkpoint's queue with its worker ranks translated to this job's:
    worker i then gets the partitions worker i had (the layout may differ)."""
    queue = dict(manifest["queue"])
    old = manifest.get("workers")
    if old and "last_worker" in queue:
        rank_of = {r: workers[i] for i, r in enumerate(old) if i < len(workers)}
        queue["last_worker"] = [rank_of.get(r, -1) for r in queue["last_worker"]]
    return queue


class JobFailed(RuntimeError):
    """The job cannot go on (a failure it cannot recover from)."""


class Scheduler:
    def __init__(self, po: Postoffice, app: App):
        self.po = po
        self.app = app
        self.interval = po.cfg.job.progress_interval
        self.hb_timeout = po.cfg.transport.heartbeat_timeout
        self.arrived: dict[tuple[int, int], list[int]] = {}
        self.counters: dict[int, dict[str, float]] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.stopped: dict[int, dict[str, Any]] = {}
        self.last_seen = {r: time.monotonic() for r in range(1, po.van.size)}
        self.events: list[dict[str, Any]] = []
        po.events = self.events  # apps read them in finish (failover timings)
        for op, handler in ((Op.BARRIER, self._barrier), (Op.REPORT, self._report),
                            (Op.DONE, self._done), (Op.STOPPED, self._stopped),
                            (Op.TASK_REQ, self._task_request), (Op.HEARTBEAT, _ignore),
                            (Op.PEER_FAILED, self._peer_failed), (Op.EVENT, self._event),
                            (Op.REPAIRED, self._repaired)):
            po.on(op, handler)
        po.observers.append(self._seen)
        self.queue = app.work_queue()
        self.waiting_for_task: list[int] = []
        # consistency: the policy's task clock (holds tasks until their
        # dependencies finished on every worker); see mpips/consistency
        if self.queue is not None:
            self.queue.bind(po.layout.workers)
        self.clock = None if self.queue is None else consistency.TaskClock(
            consistency.policy_of(po.cfg), po.layout.workers, everyone=self.queue.everyone)
        self.repairing: set[int] = set()
        self._last_check = 0.0
        # checkpoints: written at task boundaries, with every worker paused
        po.on(Op.CHECKPOINTED, self._checkpointed)
        po.on(Op.LOADED, self._loaded)
        self.ckpt_root = ckpt.checkpoint_dir(po.cfg)
        self.ckpt_next = 0
        self.ckpt_tasks_at = 0
        self.ckpt_time_at = time.monotonic()
        self.pausing = False        # no tasks handed out: a checkpoint is coming
        self.ckpt_files: dict[int, dict[str, Any]] | None = None  # writing: rank -> entry
        self.preempt_after = False  # stop the job once the checkpoint is written
        self.loaded: set[int] = set()

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
              f"{po.ring.replication}; {ft}; {po.van.library()}", flush=True)
        if po.cfg.checkpoint.resume:
            self._resume()
        next_line = t0 + self.interval

        def tick() -> bool:
            nonlocal next_line
            now = time.monotonic()
            self._check_heartbeats(now)
            self._maybe_checkpoint(now)
            if now < next_line:
                return self._all_done()
            if self.counters:
                self._print_progress(now - t0)
            next_line = now + self.interval
            return True

        def watch() -> None:
            now = time.monotonic()
            self._check_heartbeats(now)
            self._maybe_checkpoint(now)

        while not self._all_done():
            po.wait_until(tick, lambda: "", timeout=float("inf"), idle=watch)
        if self.counters:
            self._print_progress(time.monotonic() - t0)  # the last line: final totals
        servers = self._live(po.layout.servers)
        for rank in servers:
            po.send(rank, Message(op=Op.STOP))
        po.wait_until(lambda: all(r in self.stopped for r in self._live(servers)),
                      lambda: "STOPPED from servers " + ", ".join(
                          str(r) for r in servers if r not in self.stopped))
        elapsed = time.monotonic() - t0
        self._write_tasks()  # before finish: an app may fold consistency.json into its metrics
        self.app.finish(po, [self.done[r] for r in self._live(layout.workers)],
                        [self.stopped[r] for r in self._live(layout.servers)], elapsed)
        for rank in self._live(layout.workers):
            po.send(rank, Message(op=Op.STOP))
        self._write_events()
        lost = sorted(po.van.dead)
        print(f"mpips: {po.cfg.job.name}: done in {elapsed:.1f} s"
              + (f"; survived the loss of rank(s) {lost}" if lost else ""), flush=True)

    def _live(self, ranks) -> list[int]:
        return [r for r in ranks if r not in self.po.van.dead]

    def _all_done(self) -> bool:
        return all(r in self.done for r in self._live(self.po.layout.workers))

    def _print_progress(self, elapsed: float) -> None:
        totals: dict[str, float] = {}
        for c in self.counters.values():
            for k, v in c.items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0.0) + v
        if not totals:
            return
        line = self.app.progress_line(totals, elapsed)
        if self.clock is not None:
            line += self.clock.progress()
        print(f"[{elapsed:7.1f}s] {line}", file=sys.stdout, flush=True)

    # ---- messages ----------------------------------------------------------------
    def _seen(self, msg: Message) -> None:
        if msg.sender in self.last_seen:
            self.last_seen[msg.sender] = time.monotonic()

    def _barrier(self, msg: Message) -> None:
        self.arrived.setdefault((msg.flags, msg.aux), []).append(msg.sender)
        self._release_barriers()

    def _release_barriers(self) -> None:
        for key, ranks in list(self.arrived.items()):
            group = key[0]
            members = (range(1, self.po.van.size) if group == ALL
                       else self.po.layout.workers)
            if all(r in ranks for r in self._live(members)):
                live = Message.jmeta(self._live(members))  # who passed: the survivors
                for r in self._live(ranks):
                    self.po.send(r, Message(op=Op.RELEASE, flags=group, aux=key[1],
                                            meta=live))
                del self.arrived[key]

    def _task_request(self, msg: Message) -> None:
        if self.queue is None:
            raise RuntimeError(f"rank {msg.sender} asked for a task, but app "
                               f"{self.app.name!r} has no work queue")
        body = msg.json()  # {"done": [tasks finished], "want": bool}
        for done in body["done"]:
            self.queue.done(msg.sender, self.queue.task_of(done))
            if "ts" in done:
                self.clock.finish(done["ts"], msg.sender)
        if body["want"]:
            self.waiting_for_task.append(msg.sender)
            self.clock.requested(msg.sender)
        self._hand_out_tasks()

    def _hand_out_tasks(self) -> None:
        if self.pausing:
            self._maybe_checkpoint(time.monotonic())
            return
        # A done report may open the next epoch for workers already waiting.
        still = []
        for w in self._live(self.waiting_for_task):
            ts = self.clock.candidate(self.queue, w)
            if ts is not None and not self.clock.ready(ts):
                still.append(w)  # the policy holds it: dependencies not finished
                continue
            task = self.queue.next(w)
            if task is None and not self.queue.finished:
                still.append(w)  # epoch barrier: answer once the epoch is done
                continue
            meta = b"" if task is None else Message.jmeta(
                self.queue.describe(task) | self.clock.start(ts, w))
            self.po.send(w, Message(op=Op.TASK, meta=meta))
        self.waiting_for_task = still

    def _report(self, msg: Message) -> None:
        self.counters[msg.sender] = msg.json()

    def _done(self, msg: Message) -> None:
        self.done[msg.sender] = msg.json() or {}
        self.counters[msg.sender] = self.done[msg.sender].get("counters", {})

    def _stopped(self, msg: Message) -> None:
        self.stopped[msg.sender] = msg.json() or {}

    def _event(self, msg: Message) -> None:
        self.events.append(msg.json())

    def _repaired(self, msg: Message) -> None:
        if msg.aux != self.po.ring.version:
            return  # a report for an older ring: another failure came since
        self.repairing.discard(msg.sender)
        if not self.repairing:
            self.po.event("repaired", ring_version=msg.aux)
            copies = min(self.po.ring.replication, len(self.po.ring.live_servers) - 1)
            print(f"mpips: ring version {msg.aux}: repaired, every range has {copies} "
                  "replica(s) again", flush=True)

    # ---- failures -------------------------------------------------------------------
    def _check_heartbeats(self, now: float) -> None:
        if now - self._last_check < 0.1:
            return
        self._last_check = now
        for rank, seen in self.last_seen.items():
            if rank in self.po.van.dead or now - seen < self.hb_timeout:
                continue
            who = f"rank {rank} ({self.po.layout.describe(rank)})"
            if not self.po.van.fault_tolerant:
                raise JobFailed(f"{who} sent nothing for {now - seen:.0f} s "
                                "([transport] heartbeat_timeout): it hangs")
            print(f"mpips: {who} sent nothing for {now - seen:.0f} s: taken for gone",
                  flush=True)
            self.po.send(rank, Message(op=Op.ABORT, meta=b"declared dead"))
            self.po.van.mark_dead(rank)

    def _peer_failed(self, msg: Message) -> None:
        rank = msg.aux
        role = self.po.layout.role(rank)
        who = f"rank {rank} ({self.po.layout.describe(rank)})"
        self.po.event("detected", failed=rank, role=role)
        print(f"mpips: {who} failed", flush=True)
        if role == WORKER:
            if self.queue is not None:
                again = self.queue.requeue(rank)
                self.clock.abandon(rank)
                if again:
                    print(f"mpips: {len(again)} task(s) of {who} go back to the queue",
                          flush=True)
                self._hand_out_tasks()
            self.counters.pop(rank, None)
        elif role == SERVER:
            self._server_failed(rank, who)
        self._release_barriers()

    def _server_failed(self, rank: int, who: str) -> None:
        po = self.po
        if po.ring.replication == 0:
            raise JobFailed(f"{who} died and [layout] replication = 0: its key ranges are "
                            "lost. Restart with --resume from the last checkpoint, or run "
                            "with replication >= 1 and 3+ servers to survive this")
        server = po.layout.servers.index(rank)
        try:
            ring = po.ring.without(server)
        except RingError as e:
            raise JobFailed(f"{who} died: {e}") from None
        lost = [r for r in range(ring.num_ranges)
                if all(s in ring.dead for s in po.ring.holders(r))]
        if lost:
            raise JobFailed(f"{who} died with the last copy of range(s) {lost}")
        po.set_ring(ring)
        dead = Message.jmeta(sorted(ring.dead))
        for r in range(1, po.van.size):
            if r not in po.van.dead:
                po.send(r, Message(op=Op.RING, aux=ring.version, meta=dead))
        self.repairing = set(self._live(po.layout.servers))
        po.event("ring", ring_version=ring.version, dead_servers=sorted(ring.dead))
        print(f"mpips: ring version {ring.version}: the ranges of {who} moved to their "
              "first live successors", flush=True)

    # ---- checkpoints ------------------------------------------------------------------
    def _maybe_checkpoint(self, now: float) -> None:
        """Pause task hand-out when a checkpoint is due; write it once every
        live worker waits at a task boundary (all its pushes acknowledged)."""
        cfg = self.po.cfg.checkpoint
        if self.po.stop_requested and not self.preempt_after:
            self.preempt_after = True
            print(f"mpips: {self.po.stop_requested}: writing a checkpoint, then stopping",
                  flush=True)
            if self.queue is None:
                self._preempt("no work queue, so no checkpoint was written")
        if self.queue is None or self.ckpt_files is not None:
            return
        if not self.pausing:
            done = self.queue.tasks_done
            due = (cfg.every_tasks and done - self.ckpt_tasks_at >= cfg.every_tasks) or \
                (cfg.every_seconds and now - self.ckpt_time_at >= cfg.every_seconds)
            if not (due or self.preempt_after) or self.queue.finished:
                return
            self.pausing = True
        quiet = all(w in self.waiting_for_task or w in self.done
                    for w in self._live(self.po.layout.workers))
        if quiet:
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        self.ckpt_files = {}
        for rank in self._live(self.po.layout.servers):
            self.po.send(rank, Message(op=Op.CHECKPOINT, aux=self.ckpt_next,
                                       meta=str(self.ckpt_root).encode()))

    def _checkpointed(self, msg: Message) -> None:
        self.ckpt_files[msg.sender] = msg.json()
        if not all(r in self.ckpt_files for r in self._live(self.po.layout.servers)):
            return
        po, ring = self.po, self.po.ring
        manifest = {
            "time": time.time(), "files": list(self.ckpt_files.values()),
            "tables": [{"name": t.name, "vdim": t.vdim, "dtype": t.dtype,
                        "state": list(t.handle.state)} for t in po.tables],
            "ring": {"servers": ring.servers, "virtual_servers": ring.virtual_servers,
                     "replication": ring.replication},
            "queue": self.queue.snapshot(), "app": self.app.checkpoint_state(),
            "workers": list(po.layout.workers),
            "config": po.cfg.as_dict()}
        where = ckpt.write_manifest(self.ckpt_root, self.ckpt_next, manifest,
                                    po.cfg.checkpoint.keep)
        keys = sum(f["keys"] for f in manifest["files"])
        print(f"mpips: checkpoint {self.ckpt_next} written: {keys} keys, "
              f"{self.queue.tasks_done} tasks done, in {where}", flush=True)
        po.event("checkpoint", id=self.ckpt_next, keys=keys)
        self.ckpt_next += 1
        self.ckpt_tasks_at = self.queue.tasks_done
        self.ckpt_time_at = time.monotonic()
        self.ckpt_files = None
        self.pausing = False
        if self.preempt_after:
            self._preempt(f"checkpoint {self.ckpt_next - 1} is written; "
                          "continue with train --resume")
        self._hand_out_tasks()

    def _preempt(self, why: str) -> None:
        print(f"mpips: stopped on {self.po.stop_requested}: {why}", flush=True)
        for r in range(1, self.po.van.size):
            if r not in self.po.van.dead:
                self.po.send(r, Message(op=Op.PREEMPT))
        self._write_events()
        raise JobPreempted()

    def _resume(self) -> None:
        po = self.po
        manifest = ckpt.newest_complete(self.ckpt_root)
        servers = self._live(po.layout.servers)
        for rank in servers:
            po.send(rank, Message(op=Op.RESUME, meta=Message.jmeta(manifest)))
        po.wait_until(lambda: all(r in self.loaded for r in servers),
                      lambda: "LOADED from servers " + ", ".join(
                          str(r) for r in servers if r not in self.loaded))
        if self.queue is not None:
            self.queue.restore(_by_worker_index(manifest, po.layout.workers))
            self.ckpt_tasks_at = self.queue.tasks_done
        self.app.restore_state(manifest.get("app") or {})
        self.ckpt_next = manifest["id"] + 1
        print(f"mpips: resumed from checkpoint {manifest['id']} ({manifest['folder']}): "
              f"{sum(f['keys'] for f in manifest['files'])} keys"
              + (f", {self.queue.tasks_done} tasks done" if self.queue else ""), flush=True)

    def _loaded(self, msg: Message) -> None:
        self.loaded.add(msg.sender)

    def _write_tasks(self) -> None:
        """consistency: tasks.jsonl and the summary in consistency.json."""
        if self.clock is None or not self.clock.records:
            return
        out = self.po.cfg.job.output
        if self.po.cfg.consistency.log_tasks:
            self.clock.write(out)
        summary = self.clock.summary()
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "consistency.json"), "w") as f:
            f.write(json.dumps(summary) + "\n")
        print(f"mpips: consistency {summary['policy']}: {summary['tasks']} task issues, "
              f"staleness max {summary['staleness_max']} mean "
              f"{summary['staleness_mean']:.2f}, held {summary['wait_total']:.2f} s in all, "
              "idle fraction " + " ".join(f"rank {w}: {f:.1%}" for w, f in
                                          summary["idle_fraction"].items()), flush=True)

    def _write_events(self) -> None:
        if not self.events:
            return
        out = self.po.cfg.job.output
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "events.jsonl"), "a") as f:
            for e in self.events:
                f.write(json.dumps(e) + "\n")


def _ignore(msg: Message) -> None:
    pass
