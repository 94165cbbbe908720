"""The linear app's worker loop: partitions from the scheduler's queue, read
in minibatches (whole, with their key set registered, under ``[linear]
key_sets``), the next minibatch's weights pulled while the current gradient
is computed, at most ``max_inflight`` requests outstanding."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...data import localise
from ...kv.keyset import KeySet
from ...kv.worker import KVWorker
from ...postoffice import WORKERS, Postoffice
from ...startup import launched_at, mark
from .evaluation import Evaluator
from .model import Batch, BatchCache, batch_of, gradient, localised_bytes
from .synthetic import Synthetic

if TYPE_CHECKING:
    from .app import LinearApp


PHASES = ("read", "localise", "gradient", "issue", "pull wait", "window wait",
          "task end", "evaluate")


def _keys(batch: Batch):
    """What a request of ``batch`` names: positions into its partition's
    key set once it has one, else its keys."""
    return batch.keys if batch.by_position is None else batch.by_position


class PhaseClock:
    """Seconds one worker spends in each phase of its loop, and the
    wall-clock time from launch to its first push: the job's end prints them
    (``[linear]`` "where the time went")."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.started = time.perf_counter()
        self.launched = launched_at()
        self.first_push: float | None = None  # seconds after launch
        # localisation done inside a timed read (the minibatches' own, not a
        # key set's): counted as localise, so taken out of the read
        self.localised_in_read = 0.0

    def pushed(self) -> None:
        if self.first_push is None and self.launched is not None:
            self.first_push = time.time() - self.launched
            mark("first push")

    def summary(self) -> dict[str, Any]:
        total = time.perf_counter() - self.started
        seconds = dict(self.seconds)
        # a read is timed whole, and localises its minibatches inside it
        seconds["read"] = max(0.0, seconds["read"] - self.localised_in_read)
        out = {k: round(v, 6) for k, v in seconds.items()}
        out["other"] = round(max(0.0, total - sum(seconds.values())), 6)
        return {"phases": out, "seconds": round(total, 6), "first_push": self.first_push}


class LinearWorker:
    """Everything one worker does in a linear job."""

    def __init__(self, app: LinearApp, po: Postoffice):
        self.app, self.po, self.lc = app, po, app.lc
        self.kv = KVWorker(po, "w")
        self.counters: dict[str, Any] = {"examples": 0, "loss_sum": 0.0, "keys": 0,
                                         "epoch": 0, "workers": 1, "nonzeros": 0}
        self.clock = PhaseClock()
        self.inflight: deque[int] = deque()
        self.last_report = time.monotonic()
        # localised minibatches by partition path, for later epochs (the
        # queue gives a worker the partitions it had before when it can),
        # and the test share ("test"), within [linear] cache_bytes
        self.cache = BatchCache(self.lc.cache_bytes)
        self.verified: set[str] = set()  # partitions checked against their SHA-256
        # manifest entries by path: every task looks its partition up
        self.partitions = {p.path: p for p in app.train.partitions} if app.train else {}
        self.key_sets: dict[str, KeySet] = {}  # partition path -> its registered key set
        self.synthetic = None
        if self.lc.data == "synthetic":
            self.synthetic = Synthetic(self.lc.synthetic_features, self.lc.synthetic_nnz,
                                       app.cfg.job.seed)
        self.evaluation = Evaluator(app, po, self.synthetic, self.counters, self.report,
                                    self.cache)

    def report(self) -> None:
        self.po.report(self.counters)
        self.last_report = time.monotonic()

    # ---- the whole job of one worker ----
    def run(self) -> dict[str, Any]:
        ev = self.evaluation
        resumed = self.po.resumed_counters()
        self.counters.update({k: resumed[k] for k in ("examples", "loss_sum", "keys")
                              if k in resumed})
        epoch = 0
        for task_epoch, batches in self._tasks():
            t = time.perf_counter()
            while epoch < task_epoch:  # moved past an epoch: score it (asynchronously)
                if epoch in ev.epochs:
                    ev.score_round(epoch, self.kv)
                epoch += 1
            self.clock.seconds["evaluate"] += time.perf_counter() - t
            self.counters["epoch"] = task_epoch
            self._train(batches)
            # after the first task, not before: start-up needs the cores
            ev.prepare_share()  # read and localised in the background meanwhile
            t = time.perf_counter()
            ev.reduce_ready_rounds(block=False)
            self.clock.seconds["evaluate"] += time.perf_counter() - t
        self._drain()
        # sets of partitions whose last pass went to another worker
        for ks in self.key_sets.values():
            self.kv.forget(ks)
        self.key_sets.clear()
        t = time.perf_counter()
        last = self.app.epochs - 1
        while epoch < last:  # epochs this worker had no part of at the end
            if epoch in ev.epochs:
                ev.score_round(epoch, self.kv)
            epoch += 1
        # Every worker's pushes are in before anyone scores the final model.
        self.po.barrier(WORKERS)
        ev.survivors()
        if self.app.test_rows:
            ev.score_round(last, self.kv)
        self.po.barrier(WORKERS)  # every share of the last round is in
        ev.reduce_ready_rounds(block=True)
        self.clock.seconds["evaluate"] += time.perf_counter() - t
        self.po.report(self.counters)
        return {"counters": self.counters, "evals": ev.evals, "time": self.clock.summary()}

    def _tasks(self) -> Iterator[tuple[int, Iterator[Batch]]]:
        """(epoch, minibatches) of each piece of work: partitions from the
        scheduler's queue, or this worker's synthetic rows once per epoch."""
        bias, mb_rows = self.lc.bias, self.app.minibatch
        if self.synthetic is not None:
            rows, _ = self.synthetic.rows(self.lc.synthetic_rows, 1 + self.po.worker_index())
            for epoch in range(self.app.epochs):
                yield epoch, (batch_of(rows.slice(a, min(rows.rows, a + mb_rows)), bias)
                              for a in range(0, rows.rows, mb_rows))
            return
        task = self.po.next_task()
        while task is not None:
            path = task["path"]
            batches = self.cache.get(path)
            if self.lc.key_sets and (batches is not None or self._fits_whole(path)):
                # The whole partition first, then its key set registered: the
                # servers insert and look up its keys once, in one request,
                # instead of a search and an insert per minibatch (costs one
                # more localisation of its keys; docs/performance.md).
                if batches is None:
                    t = time.perf_counter()
                    batches = list(self._read(path))
                    self.clock.seconds["read"] += time.perf_counter() - t
                self._by_position(path, batches)
            yield task["epoch"], iter(batches) if batches is not None else self._read(path)
            t = time.perf_counter()
            self._drain()  # a task is done when its pushes are acknowledged
            if path in self.key_sets and (self.cache.get(path) is None
                                          or task["epoch"] == self.app.epochs - 1):
                # not kept for another pass (over the cache budget: read and
                # localised anew next time), or its last: the servers let go
                self.kv.forget(self.key_sets.pop(path))
            self.clock.seconds["task end"] += time.perf_counter() - t
            self.report()  # before the next task: a checkpoint then has these counts
            task = self.po.next_task(done=task)

    def _read(self, path: str) -> Iterator[Batch]:
        """The localised minibatches of one partition, kept for later epochs
        while ``[linear] cache_bytes`` allows (whole partitions only)."""
        from ...data.reader import PartitionError, read_minibatches
        info = self.partitions[path]
        if self.app.cfg.data.verify == "sha256" and path not in self.verified:
            from ...data.verify import check_partition
            problems = check_partition(path, info, self.app.train.raw.get("labels") == "binary")
            if problems:
                raise PartitionError("; ".join(problems))
            self.verified.add(path)
        mb_rows = self.app.minibatch
        chunk = max(mb_rows, self.app.cfg.data.chunk_rows // mb_rows * mb_rows)
        yield from self.cache.fill(path, self._localised(read_minibatches(
            [path], mb_rows, chunk, [info])), want=self.app.epochs > 1)

    def _fits_whole(self, path: str) -> bool:
        """Whether a partition's localised minibatches fit in ``cache_bytes``
        (from its manifest entry): only then is it read whole to register
        its key set; a larger one streams by key, in the memory of a chunk."""
        info = self.partitions[path]
        return localised_bytes(info.rows, info.nnz, info.has_values, self.lc.bias) \
            <= self.lc.cache_bytes

    def _by_position(self, path: str, batches: list[Batch]) -> None:
        """Register the key set of a partition (the union of its minibatches'
        keys), once while its minibatches are kept: they then travel as
        positions into it and the servers look nothing up. One localisation
        of all the keys gives the union and every minibatch's positions in it."""
        if path in self.key_sets or not batches:
            return
        t = time.perf_counter()
        union, columns = localise(np.concatenate([b.keys for b in batches]))
        ks = self.key_sets[path] = self.kv.register(union)
        at = 0
        for b in batches:
            n = b.keys.size
            b.by_position = ks.subset(columns[at: at + n], keys=b.keys)
            at += n
        self.clock.seconds["localise"] += time.perf_counter() - t

    def _localised(self, minibatches: Iterator[Any]) -> Iterator[Batch]:
        seconds = self.clock.seconds
        for mb in minibatches:
            t = time.perf_counter()
            batch = batch_of(mb, self.lc.bias)
            spent = time.perf_counter() - t
            seconds["localise"] += spent
            self.clock.localised_in_read += spent
            yield batch

    # ---- training ----
    def _bound(self, room: int) -> None:
        """Wait for the oldest requests until ``room`` more fit under max_inflight."""
        if self.inflight and len(self.inflight) + room > self.lc.max_inflight:
            t = time.perf_counter()
            while self.inflight and len(self.inflight) + room > self.lc.max_inflight:
                self.kv.wait(self.inflight.popleft())
            self.clock.seconds["window wait"] += time.perf_counter() - t

    def _train(self, batches: Iterator[Batch]) -> None:
        lc, kv, c = self.lc, self.kv, self.counters
        seconds, clock = self.clock.seconds, time.perf_counter
        l2 = 0.0 if lc.algorithm == "ftrl" else lc.l2  # ftrl applies its own l2
        t0 = clock()
        nxt = next(batches, None)
        t1 = clock()
        ahead = kv.pull(_keys(nxt)) if nxt is not None else None
        seconds["read"] += t1 - t0
        seconds["issue"] += clock() - t1
        while nxt is not None:
            cur, cur_ts = nxt, ahead
            t0 = clock()
            w = kv.wait(cur_ts)[:, 0].astype(np.float64)
            # Pull ahead: the next minibatch's weights travel while this
            # gradient is computed.
            t1 = clock()
            nxt = next(batches, None)
            t2 = clock()
            seconds["pull wait"] += t1 - t0
            seconds["read"] += t2 - t1
            if nxt is not None:
                self._bound(1)
                t2 = clock()
                ahead = kv.pull(_keys(nxt))
                seconds["issue"] += clock() - t2
            t0 = clock()
            mask = None
            if l2 and cur.bias >= 0:
                mask = np.ones(cur.keys.size)
                mask[cur.bias] = 0.0  # the intercept is not penalised
            grad, loss, _ = gradient(lc.loss, cur.X, cur.y, w, l2, mask)
            if lc.algorithm == "ftrl":
                grad *= cur.rows  # sums, as FTRL's per-example rounds: l1, l2 keep their units
            grad = grad.astype(np.float32)
            seconds["gradient"] += clock() - t0
            self._bound(1 + (nxt is not None))
            t0 = clock()
            self.inflight.append(kv.push(_keys(cur), grad))
            seconds["issue"] += clock() - t0
            self.clock.pushed()
            c["examples"] += cur.rows
            c["nonzeros"] += cur.X.nnz
            c["loss_sum"] += loss
            c["keys"] += 2 * cur.keys.size
            if time.monotonic() - self.last_report >= lc.report_interval:
                self.report()

    def _drain(self) -> None:
        while self.inflight:
            self.kv.wait(self.inflight.popleft())
