"""The partition work queue the scheduler drives (pure Python, no MPI).

Workers ask for one partition at a time, so fast workers take more and slow
ones fewer. Every epoch hands each partition out once, in a seeded shuffled
order if asked. When a worker dies, :meth:`PartitionQueue.requeue` puts the
partitions it held back at the front of the queue, to be handed again; a task
counts as done only when the worker that holds it reports it, so each
partition is completed exactly once per epoch, which :meth:`check_exactly_once`
verifies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..app import QueueError


@dataclass(frozen=True)
class Task:
    """Partition ``partition`` (index into the list given) in ``epoch``;
    ``attempt`` counts earlier hand-outs lost with a dead worker."""

    epoch: int
    partition: int
    path: str
    attempt: int = 0


class _Pending:
    """The tasks waiting to be handed out, in order, with the earliest
    first-attempt task of each partition at hand: taking "the first pending
    task this worker did last epoch" costs the worker's own partitions, not
    a scan of the queue. Taken tasks leave the order lazily (skipped when
    they reach its front)."""

    def __init__(self, tasks: Sequence[Task] = ()):
        self._order: deque[Task] = deque()
        self._gone: set[Task] = set()
        self._seq: dict[Task, int] = {}
        self._first_try: dict[int, deque[Task]] = {}  # partition -> its attempt-0 tasks
        self._back, self._front = 0, 0
        self.extend(tasks)

    def __len__(self) -> int:
        return len(self._order) - len(self._gone)

    def __iter__(self):
        return (t for t in self._order if t not in self._gone)

    def extend(self, tasks) -> None:
        for t in tasks:
            self._back += 1
            self._seq[t] = self._back
            self._order.append(t)
            if t.attempt == 0:
                self._first_try.setdefault(t.partition, deque()).append(t)

    def push_front(self, tasks: list[Task]) -> None:
        """``tasks`` (requeued: attempt > 0) before every pending one, in order."""
        for t in reversed(tasks):
            self._front -= 1
            self._seq[t] = self._front
            self._order.appendleft(t)

    def _remove(self, t: Task) -> Task:
        del self._seq[t]
        if t.attempt == 0:
            first = self._first_try[t.partition]
            first.popleft()  # t is its partition's earliest first attempt
            if not first:
                del self._first_try[t.partition]
        return t

    def take_first_try(self, partitions) -> Task | None:
        """The earliest pending first attempt of any of ``partitions``, taken."""
        best = None
        for p in partitions:
            first = self._first_try.get(p)
            if first and (best is None or self._seq[first[0]] < self._seq[best]):
                best = first[0]
        if best is None:
            return None
        self._gone.add(best)
        return self._remove(best)

    def popleft(self) -> Task:
        while True:
            t = self._order.popleft()
            if t in self._gone:
                self._gone.discard(t)
                continue
            return self._remove(t)


class PartitionQueue:
    """Hands partitions to workers, epoch after epoch.

    ``next(worker)`` returns a :class:`Task` or ``None`` when nothing can be
    handed now (check :attr:`finished`: all epochs done). With
    ``epoch_barrier`` the next epoch starts only when the last one is fully
    done; without it, idle workers start the next epoch while stragglers finish.
    A :class:`mpips.app.WorkQueue`.
    """

    everyone = False  # each task goes to one worker

    def __init__(self, partitions: Sequence[str], epochs: int = 1, shuffle: bool = False,
                 seed: int = 0, epoch_barrier: bool = False):
        if not partitions:
            raise ValueError("the queue needs at least one partition")
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        self.partitions = list(partitions)
        self.epochs, self.shuffle, self.seed = epochs, shuffle, seed
        self.epoch_barrier = epoch_barrier
        self._pending = _Pending()
        self._held: dict[int, list[Task]] = {}
        self._completed = np.zeros((epochs, len(self.partitions)), np.int64)
        self._handed = np.zeros((epochs, len(self.partitions)), np.int64)
        self._lost = np.zeros((epochs, len(self.partitions)), np.int64)
        self._opened = 0  # epochs whose tasks were queued
        # The worker that last completed each partition: it gets the same
        # partition again when it can, so its key caches keep hitting.
        self._last_worker = np.full(len(self.partitions), -1, np.int64)
        self._did: dict[int, set[int]] = {}  # worker -> the partitions it did last

    def bind(self, workers: list[int]) -> None:
        """Any worker may take any partition: the ranks change nothing."""

    def peek(self, worker: int) -> None:
        """Tasks are numbered in hand-out order, by the scheduler's clock."""
        return None

    @staticmethod
    def describe(task: Task) -> dict[str, Any]:
        return {"epoch": task.epoch, "partition": task.partition, "path": task.path,
                "attempt": task.attempt}

    @staticmethod
    def task_of(fields: dict[str, Any]) -> Task:
        return Task(int(fields["epoch"]), int(fields["partition"]), str(fields["path"]),
                    int(fields["attempt"]))

    def order(self, epoch: int) -> list[int]:
        """Partition order of ``epoch``: seeded by (seed, epoch) alone, so it does
        not depend on how the queue was driven."""
        n = len(self.partitions)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch]).permutation(n).tolist()

    def _open_next_epoch(self) -> bool:
        if self._opened >= self.epochs:
            return False
        if self.epoch_barrier and self._opened and not self.epoch_done(self._opened - 1):
            return False
        epoch = self._opened
        self._pending.extend(Task(epoch, p, self.partitions[p]) for p in self.order(epoch))
        self._opened += 1
        return True

    def next(self, worker: int) -> Task | None:
        if not self._pending and not self._open_next_epoch():
            return None
        task = self._take(worker)
        self._held.setdefault(worker, []).append(task)
        self._handed[task.epoch, task.partition] += 1
        return task

    def _take(self, worker: int) -> Task:
        """The first pending task this worker did last epoch, else the first."""
        task = self._pending.take_first_try(self._did.get(worker, ()))
        return task if task is not None else self._pending.popleft()

    def done(self, worker: int, task: Task) -> None:
        held = self._held.get(worker, [])
        if task not in held:
            raise QueueError(f"worker {worker} reports {task} it does not hold "
                             "(requeued after a failure, or reported twice)")
        held.remove(task)
        if self._completed[task.epoch, task.partition]:
            raise QueueError(f"{task.path} completed twice in epoch {task.epoch}")
        self._completed[task.epoch, task.partition] = 1
        self._set_last_worker(task.partition, worker)

    def _set_last_worker(self, partition: int, worker: int) -> None:
        old = int(self._last_worker[partition])
        if old >= 0:
            self._did[old].discard(partition)
        self._last_worker[partition] = worker
        if worker >= 0:
            self._did.setdefault(worker, set()).add(partition)

    def requeue(self, worker: int) -> list[Task]:
        """Return a dead worker's unfinished tasks to the front of the queue."""
        lost = self._held.pop(worker, [])
        again = [Task(t.epoch, t.partition, t.path, t.attempt + 1) for t in lost]
        for task in lost:
            self._lost[task.epoch, task.partition] += 1
        self._pending.push_front(again)
        return again

    def held(self, worker: int) -> list[Task]:
        return list(self._held.get(worker, []))

    def epoch_done(self, epoch: int) -> bool:
        return bool(self._completed[epoch].all())

    @property
    def finished(self) -> bool:
        return bool(self._completed.all())

    @property
    def remaining(self) -> int:
        """Tasks not yet completed, over all epochs."""
        return int(self._completed.size - self._completed.sum())

    def snapshot(self) -> dict:
        """The queue's position, for a checkpoint taken while no task is held."""
        if any(self._held.values()):
            raise QueueError("a checkpoint needs every task reported first")
        return {"completed": self._completed.tolist(), "handed": self._handed.tolist(),
                "lost": self._lost.tolist(), "opened": self._opened,
                "last_worker": self._last_worker.tolist(),
                "pending": [[t.epoch, t.partition, t.attempt] for t in self._pending]}

    def restore(self, state: dict) -> None:
        """Continue from :meth:`snapshot` output (same partitions and epochs)."""
        completed = np.array(state["completed"], np.int64)
        if completed.shape != self._completed.shape:
            raise QueueError(f"the checkpoint's queue has {completed.shape[1]} partitions x "
                             f"{completed.shape[0]} epochs; this job has "
                             f"{len(self.partitions)} x {self.epochs}")
        self._completed = completed
        self._handed = np.array(state["handed"], np.int64)
        self._lost = np.array(state["lost"], np.int64)
        self._opened = int(state["opened"])
        if "last_worker" in state:  # who did each partition last: same hand-out order
            self._last_worker = np.full(len(self.partitions), -1, np.int64)
            self._did = {}
            for part, worker in enumerate(state["last_worker"]):
                self._set_last_worker(part, int(worker))
        self._pending = _Pending([Task(e, p, self.partitions[p], a)
                                  for e, p, a in state["pending"]])
        self._held = {}

    @property
    def tasks_done(self) -> int:
        return int(self._completed.sum())

    def check_exactly_once(self) -> None:
        """Raise unless every partition was completed exactly once per epoch and
        handed exactly once more than it was lost."""
        for name, counts in (("completed", self._completed),
                             ("handed (net of requeues)", self._handed - self._lost)):
            bad = np.argwhere(counts != 1)
            if bad.size:
                epoch, part = (int(v) for v in bad[0])
                raise QueueError(f"{self.partitions[part]} {name} "
                                 f"{int(counts[epoch, part])} times in epoch {epoch}")


def split_by_size(sizes: list[int], ranks: int) -> list[list[int]]:
    """Deal items to ranks, biggest first, each to the least loaded rank.

    Deterministic (ties go to the lower rank); each rank's list is sorted.
    """
    load = [0] * ranks
    owned: list[list[int]] = [[] for _ in range(ranks)]
    for item in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owned[rank].append(item)
        load[rank] += max(sizes[item], 1)
    return [sorted(items) for items in owned]


def partition_warning(queue: object, workers: int) -> str | None:
    """A data set with fewer partitions than workers leaves workers idle."""
    if not isinstance(queue, PartitionQueue) or len(queue.partitions) >= workers:
        return None
    parts = queue.partitions
    return (f"{len(parts)} partition(s) for {workers} workers: {workers - len(parts)} "
            "worker(s) will wait idle each epoch; convert with a smaller "
            "--rows-per-partition to use them all")
