"""The scheduler's checkpoints: written at task boundaries, with every
worker paused (all its pushes acknowledged), on a schedule or on a signal
(SIGUSR1/SIGTERM: checkpoint, then stop); and the resume from the newest
complete one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import checkpoint as ckpt
from ..postoffice import RESUMED_COUNTERS, Command, JobPreempted
from ..status import write_status
from ..transport import Message, Op
from .failures import PeersLost
from .progress import sum_counters

# Seconds a SIGTERM waits for failure reports before it is taken for a preemption.
TERM_GRACE = 1.0

if TYPE_CHECKING:
    from .core import Scheduler


def _by_worker_index(manifest: dict[str, Any], workers: tuple[int, ...]) -> dict[str, Any]:
    """The checkpoint's queue with its worker ranks translated to this job's:
    worker i then gets the partitions worker i had (the layout may differ)."""
    queue = dict(manifest["queue"])
    old = manifest.get("workers")
    if old and "last_worker" in queue:
        rank_of = {r: workers[i] for i, r in enumerate(old) if i < len(workers)}
        queue["last_worker"] = [rank_of.get(r, -1) for r in queue["last_worker"]]
    return queue


class Checkpoints:
    def __init__(self, sched: Scheduler):
        self.sched, self.po = sched, sched.po
        po = self.po
        po.on(Op.CHECKPOINTED, self._checkpointed)
        po.on(Op.CHECKPOINT_COPIED, self._copied)
        po.on(Op.LOADED, lambda msg: self.loaded.add(msg.sender))
        self.root = ckpt.checkpoint_dir(po.cfg)
        self.next_id = 0
        self.tasks_at = 0
        self.time_at = time.monotonic()
        self.pausing = False        # no tasks handed out: a checkpoint is coming
        self.files: dict[int, dict[str, Any]] | None = None  # writing: rank -> entry
        self.asked: set[int] = set()   # the servers asked for the checkpoint in progress
        self.copied: set[int] = set()  # those whose arrays are copied
        self.state: dict[str, Any] = {}  # the job's state at the copy, for the manifest
        self.started_at = 0.0
        self.preempt_after = False  # stop the job once the checkpoint is written
        self.loaded: set[int] = set()
        # worker index -> its counters at the checkpoint resumed from
        self.resumed_counters: dict[str, dict[str, Any]] = {}
        po.on_command(RESUMED_COUNTERS, self._counters_of)

    def _counters_of(self, asked: Command) -> Command:
        """A resumed worker's counters: the checkpoint's for its index and,
        when the job resumed with fewer workers, those of the indices left
        over (old index i goes to new index i mod workers), so that every
        example counted before the checkpoint is counted once after it."""
        workers = len(self.po.layout.workers)
        index = self.po.layout.workers.index(asked.sender)
        merged: dict[str, Any] = {}
        for old, counters in sorted(self.resumed_counters.items(), key=lambda c: int(c[0])):
            if int(old) % workers != index:
                continue
            for key, value in counters.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    merged[key] = merged.get(key, 0) + value
                else:
                    merged.setdefault(key, value)
        return Command(RESUMED_COUNTERS, merged)

    def maybe_checkpoint(self, now: float | None = None) -> None:
        """Pause task hand-out when a checkpoint is due; write it once every
        live worker waits at a task boundary (all its pushes acknowledged)."""
        now = time.monotonic() if now is None else now
        cfg = self.po.cfg.checkpoint
        tasks = self.sched.tasks
        queue = tasks.queue
        if self.po.stop_requested and not self.preempt_after:
            if self.po.stop_requested == "SIGTERM":
                # The launcher also sends SIGTERM when it ends a job after a
                # lost host: failures show up within moments of it. Wait a
                # little for them before taking the signal for a preemption.
                since = now - self.po.stop_requested_at
                lost = self.sched.failover.loss_before(self.po.stop_requested_at)
                if lost:
                    self._peers_lost(lost)
                if since < TERM_GRACE:
                    return
            self.preempt_after = True
            print(f"mpips: {self.po.stop_requested}: writing a checkpoint, then stopping",
                  flush=True)
            if queue is None:
                self._preempt("no work queue, so no checkpoint was written")
        if queue is None or self.files is not None:
            return
        if not self.pausing:
            done = queue.tasks_done
            due = (cfg.every_tasks and done - self.tasks_at >= cfg.every_tasks) or \
                (cfg.every_seconds and now - self.time_at >= cfg.every_seconds)
            if not (due or self.preempt_after) or queue.finished:
                return
            self.pausing = True
        quiet = all(w in tasks.waiting or w in self.sched.done
                    for w in self.sched.live(self.po.layout.workers))
        if quiet:
            self._start()

    def _start(self) -> None:
        self.files, self.copied = {}, set()
        self.asked = set(self.sched.live(self.po.layout.servers))
        self.started_at = time.monotonic()
        for rank in sorted(self.asked):
            self.po.send(rank, Message(op=Op.CHECKPOINT, aux=self.next_id,
                                       meta=str(self.root).encode()))

    def _copied(self, msg: Message) -> None:
        """A server copied its arrays. Once every one has, the job's state is
        taken with them (the workers still wait at task boundaries: the queue
        and counters match the copies) and the workers go on while the
        servers write; a preemption waits for the files."""
        if self.files is None or msg.aux != self.next_id:
            return
        self.copied.add(msg.sender)
        if not all(r in self.copied for r in self.sched.live(sorted(self.asked))):
            return
        po, ring, queue = self.po, self.po.ring, self.sched.tasks.queue
        self.state = {
            "time": time.time(),
            "tables": [{"name": t.name, "vdim": t.vdim, "dtype": t.dtype,
                        "state": list(t.handle.state)} for t in po.tables],
            "ring": {"servers": ring.servers, "virtual_servers": ring.virtual_servers,
                     "replication": ring.replication},
            "queue": queue.snapshot(), "app": self.sched.app.checkpoint_state(),
            "workers": list(po.layout.workers),
            # each worker's counters (it reported them before asking for the
            # task it waits for): a resumed run counts on from them
            "counters": {str(i): self.sched.counters.get(r, {})
                         for i, r in enumerate(po.layout.workers)},
            "config": po.cfg.as_dict(), "tasks_done": queue.tasks_done,
            "paused_seconds": round(time.monotonic() - self.started_at, 6)}
        self.tasks_at = queue.tasks_done
        self.time_at = time.monotonic()
        po.event("checkpoint_copied", id=self.next_id, tasks_done=queue.tasks_done)
        if not self.preempt_after:
            self.pausing = False
            self.sched.tasks.hand_out()

    def _checkpointed(self, msg: Message) -> None:
        if self.files is None or msg.aux != self.next_id:
            return
        entry = msg.json()
        if "error" in entry:
            self._abandon(entry["error"])
            return
        self.files[msg.sender] = entry
        live = self.sched.live(sorted(self.asked))
        if not all(r in self.files for r in live):
            return
        lost = sorted(self.asked - set(self.files))
        if lost:  # their copies died with them: this checkpoint misses their ranges
            self._abandon(f"server rank(s) {lost} died before writing their part")
            return
        po = self.po
        manifest = dict(self.state, files=list(self.files.values()),
                        write_seconds=round(time.monotonic() - self.started_at, 6))
        where = ckpt.write_manifest(self.root, self.next_id, manifest,
                                    po.cfg.checkpoint.keep)
        keys = sum(f["keys"] for f in manifest["files"])
        meanwhile = self.sched.tasks.queue.tasks_done - manifest["tasks_done"]
        print(f"mpips: checkpoint {self.next_id} written: {keys} keys, "
              f"{manifest['tasks_done']} tasks done, in "
              f"{where} (workers paused {manifest['paused_seconds']:.3f} s, written in "
              f"{manifest['write_seconds']:.3f} s, {meanwhile} tasks done meanwhile)",
              flush=True)
        po.event("checkpoint", id=self.next_id, keys=keys, tasks_meanwhile=meanwhile,
                 paused_s=manifest["paused_seconds"], written_s=manifest["write_seconds"])
        self._finish()
        if self.preempt_after:
            self._preempt(f"checkpoint {self.next_id - 1} is written; "
                          "continue with train --resume")

    def _abandon(self, why: str) -> None:
        print(f"mpips: checkpoint {self.next_id} abandoned: {why}", flush=True)
        self.po.event("checkpoint_abandoned", id=self.next_id, why=why)
        self._finish()
        if self.preempt_after:
            self._preempt(f"checkpoint {self.next_id - 1} could not be written ({why})")

    def _finish(self) -> None:
        """The checkpoint in progress is over (written or abandoned)."""
        self.next_id += 1
        self.files, self.state = None, {}
        if self.pausing and not self.preempt_after:
            self.pausing = False
            self.sched.tasks.hand_out()

    def _peers_lost(self, lost: str) -> None:
        written = ckpt.complete_ids(self.root)
        resume = (f"continue from checkpoint {written[-1]} in {self.root} with train --resume"
                  if written else
                  "no checkpoint was written yet: a rerun starts over")
        self.sched.write_events()
        raise PeersLost(f"SIGTERM after {lost}: the launcher is ending the job because "
                        f"of that loss, not a preemption; no checkpoint now. {resume}")

    def _preempt(self, why: str) -> None:
        print(f"mpips: stopped on {self.po.stop_requested}: {why}", flush=True)
        write_status(self.po.cfg.job.output, "preempted", signal=self.po.stop_requested,
                     message=why)
        for r in range(1, self.po.van.size):
            if r not in self.po.van.dead:
                self.po.send(r, Message(op=Op.PREEMPT))
        self.sched.write_events()
        raise JobPreempted()

    def resume(self) -> None:
        """Every server loads its ranges from the newest complete checkpoint;
        the queue and the app's state continue from it."""
        po, queue = self.po, self.sched.tasks.queue
        manifest = ckpt.newest_complete(self.root)
        servers = self.sched.live(po.layout.servers)
        for rank in servers:
            po.send(rank, Message(op=Op.RESUME, meta=Message.jmeta(manifest)))
        po.wait_until(lambda: all(r in self.loaded for r in servers),
                      lambda: "LOADED from servers " + ", ".join(
                          str(r) for r in servers if r not in self.loaded))
        if queue is not None:
            queue.restore(_by_worker_index(manifest, po.layout.workers))
            self.tasks_at = queue.tasks_done
        self.resumed_counters = manifest.get("counters") or {}
        self.sched.app.restore_state(manifest.get("app") or {},
                                     sum_counters(self.resumed_counters.values()))
        self.next_id = manifest["id"] + 1
        print(f"mpips: resumed from checkpoint {manifest['id']} ({manifest['folder']}): "
              f"{sum(f['keys'] for f in manifest['files'])} keys"
              + (f", {queue.tasks_done} tasks done" if queue else ""), flush=True)
