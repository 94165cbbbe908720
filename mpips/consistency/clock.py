"""The scheduler's task clock: which tasks have finished, whether the policy
lets a task start, and what every task waited for.

Two kinds of work queue feed it. A :class:`~mpips.data.PartitionQueue` hands
each task (a partition) to one worker; its timestamps are the hand-out order.
An :class:`IterationQueue` hands every task (an iteration) to every worker;
its timestamp is the iteration, and it finishes when all live workers report
it. Either way a task's dependencies must have *finished* (every participant
reported it done, which a worker does only once the task's pushes are
acknowledged) before the scheduler issues it: a global bound.

Every issue and finish gets a number from one scheduler-wide event counter
(``start_seq``, ``finish_seq``), so the guarantee can be checked from the log
by order alone, not by clocks. Staleness of a task is the number of earlier
tasks not finished when it was issued: the updates its pulls may miss (an
upper bound; a running task may have pushed part of its update already).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..app import QueueError, WorkQueue
from .policy import Policy


@dataclass(frozen=True)
class IterationTask:
    """Iteration ``iteration``, run by every worker on its own data."""

    iteration: int
    attempt: int = 0


class IterationQueue:
    """Hands iterations 0 .. ``iterations - 1`` to every worker in order;
    finished when every live worker reported every iteration. A
    :class:`mpips.app.WorkQueue`."""

    everyone = True  # each task is run by every worker

    def __init__(self, iterations: int, workers: list[int] | None = None):
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        self.iterations = iterations
        self.bind(workers or [])

    def bind(self, workers: list[int]) -> None:
        """The worker ranks (the scheduler calls this: an app's ``work_queue``
        does not know the layout)."""
        self.workers = list(workers)
        self.issued = dict.fromkeys(workers, 0)
        self.completed = dict.fromkeys(workers, 0)
        self._held: dict[int, set[int]] = {w: set() for w in workers}
        self.dead: set[int] = set()

    def peek(self, worker: int) -> int | None:
        """The timestamp ``worker`` would get next (None: it had them all)."""
        i = self.issued[worker]
        return i if i < self.iterations else None

    def next(self, worker: int) -> IterationTask | None:
        i = self.peek(worker)
        if i is None:
            return None
        self.issued[worker] = i + 1
        self._held[worker].add(i)
        return IterationTask(i)

    def done(self, worker: int, task: IterationTask) -> None:
        held = self._held.get(worker, set())
        if task.iteration not in held:
            raise QueueError(f"worker {worker} reports iteration {task.iteration} it does "
                             "not hold (reported twice?)")
        held.remove(task.iteration)
        self.completed[worker] += 1

    @staticmethod
    def task_of(d: dict[str, Any]) -> IterationTask:
        return IterationTask(int(d["iteration"]), int(d.get("attempt", 0)))

    @staticmethod
    def describe(task: IterationTask) -> dict[str, Any]:
        return {"iteration": task.iteration, "attempt": task.attempt}

    def requeue(self, worker: int) -> list[IterationTask]:
        """A dead worker's iterations are not redone: the others go on without
        its share of the data (its pushes so far stay applied)."""
        self.dead.add(worker)
        self._held.pop(worker, None)
        return []

    def held(self, worker: int) -> list[IterationTask]:
        return [IterationTask(i) for i in sorted(self._held.get(worker, ()))]

    @property
    def finished(self) -> bool:
        return all(self.completed[w] >= self.iterations for w in self.workers
                   if w not in self.dead)

    @property
    def tasks_done(self) -> int:
        return sum(self.completed.values())

    def snapshot(self) -> dict:
        raise QueueError("checkpoints of iteration tasks are not supported yet")

    def restore(self, state: dict) -> None:
        raise QueueError("checkpoints of iteration tasks are not supported yet")


class TaskClock:
    """Finished tasks, readiness under a policy, and per-task records."""

    def __init__(self, policy: Policy, workers: list[int], everyone: bool = False):
        self.policy = policy
        self.everyone = everyone
        self.live = set(workers)
        self.watermark = 0  # every task below has finished
        self._finished_above: set[int] = set()
        self.open: dict[int, set[int]] = {}  # issued task -> workers yet to finish it
        self.next_ts = 0  # one-worker tasks: the next timestamp to issue
        self.seq = 0
        self.t0 = time.monotonic()
        self.records: dict[tuple[int, int], dict[str, Any]] = {}
        # running totals of the records, so that a progress line costs O(1),
        # not a pass over every task ever issued
        self._stale_sum = 0
        self._stale_max = 0
        self._wait_total = 0.0
        self.requested_at: dict[int, float] = {}
        self.first_request: dict[int, float] = {}
        self.last_finish: dict[int, float] = {}
        self.wait_sum: dict[int, float] = dict.fromkeys(workers, 0.0)

    # ---- the policy's view ----
    def is_finished(self, t: int) -> bool:
        return t < self.watermark or t in self._finished_above

    def candidate(self, queue: WorkQueue, worker: int) -> int | None:
        """The timestamp of the task ``worker`` would get from ``queue`` next."""
        return queue.peek(worker) if queue.everyone else self.next_ts

    def ready(self, t: int) -> bool:
        return self.policy.ready(t, self)

    def unfinished_before(self, t: int) -> int:
        """Tasks s < t not finished: the staleness of a task issued now."""
        if self.watermark >= t:
            return 0
        return t - self.watermark - sum(1 for s in self._finished_above if s < t)

    # ---- events ----
    def _now(self) -> float:
        return time.monotonic() - self.t0

    def requested(self, worker: int) -> None:
        now = self._now()
        self.requested_at[worker] = now
        self.first_request.setdefault(worker, now)

    def start(self, t: int, worker: int) -> dict[str, Any]:
        """Record that task ``t`` goes to ``worker`` now; returns what the task
        message carries: timestamp, staleness, seconds it was held."""
        now = self._now()
        if t not in self.open and not self.is_finished(t):
            self.open[t] = set(self.live) if self.everyone else {worker}
        if not self.everyone:
            self.next_ts = t + 1
        staleness = self.unfinished_before(t)
        wait = now - self.requested_at.get(worker, now)
        self.wait_sum[worker] = self.wait_sum.get(worker, 0.0) + wait
        self.seq += 1
        old = self.records.get((t, worker))
        if old is not None:  # started again: the new start replaces it
            self._stale_sum -= old["staleness"]
            self._wait_total -= old["wait"]
        self._stale_sum += staleness
        self._stale_max = max(self._stale_max, staleness)
        self._wait_total += round(wait, 6)
        self.records[(t, worker)] = {"ts": t, "worker": worker, "requested": round(
            self.requested_at.get(worker, now), 6), "start": round(now, 6),
            "start_seq": self.seq, "staleness": staleness, "wait": round(wait, 6)}
        return {"ts": t, "staleness": staleness, "wait": wait}

    def finish(self, t: int, worker: int, abandoned: bool = False) -> None:
        now = self._now()
        self.seq += 1
        rec = self.records.get((t, worker))
        if rec is not None:
            rec.update(finish=round(now, 6), finish_seq=self.seq)
            if abandoned:
                rec["abandoned"] = True
        self.last_finish[worker] = now
        waiting = self.open.get(t)
        if waiting is None:
            return
        waiting.discard(worker)
        if not waiting:
            del self.open[t]
            self._finished_above.add(t)
            while self.watermark in self._finished_above:
                self._finished_above.remove(self.watermark)
                self.watermark += 1

    def abandon(self, worker: int) -> None:
        """A dead worker: its open tasks count as finished (a requeued
        partition comes back under a new timestamp); later iterations do not
        wait for it."""
        self.live.discard(worker)
        for t in sorted(self.open):
            if worker in self.open.get(t, ()):
                self.finish(t, worker, abandoned=True)

    # ---- reports ----
    def idle_fractions(self) -> dict[int, float]:
        """Per worker: time its task requests were held / time from its first
        request to its last finished task."""
        out = {}
        for w, first in self.first_request.items():
            span = self.last_finish.get(w, first) - first
            out[w] = self.wait_sum.get(w, 0.0) / span if span > 0 else 0.0
        return out

    def summary(self) -> dict[str, Any]:
        n = len(self.records)
        return {"split": "consistency", "policy": str(self.policy), "tau": self.policy.tau,
                "tasks": n, "finished": self.watermark + len(self._finished_above),
                "staleness_max": self._stale_max,
                "staleness_mean": self._stale_sum / n if n else 0.0,
                "wait_mean": self._wait_total / n if n else 0.0,
                "wait_total": self._wait_total,
                "idle_fraction": {str(w): round(f, 4) for w, f in
                                  sorted(self.idle_fractions().items())}}

    def progress_fields(self) -> dict[str, Any]:
        """Tasks finished, the largest staleness and the most idle worker's
        share of time (one number whatever the worker count; the job's end
        gives every worker's)."""
        if not self.records:
            return {}
        idle_max = 0.0  # one pass, nothing sorted or kept: it runs every progress line
        for w, first in self.first_request.items():
            span = self.last_finish.get(w, first) - first
            if span > 0:
                idle_max = max(idle_max, self.wait_sum.get(w, 0.0) / span)
        return {"tasks": self.watermark + len(self._finished_above),
                "stale_max": self._stale_max, "idle_max": round(idle_max, 4)}

    def write(self, folder: str | Path) -> Path:
        """``tasks.jsonl`` (one line per task and worker, in issue order) in
        ``folder``; returns its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "tasks.jsonl"
        recs = sorted(self.records.values(), key=lambda r: r["start_seq"])
        with open(path, "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        return path
