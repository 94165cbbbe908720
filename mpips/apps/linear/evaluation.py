"""Test rounds of the linear app, reduced on the servers.

After each ``eval_every`` epochs and at the end, every worker scores its
share of the test rows (a contiguous slice of every test partition) and
pushes partial results to two kv tables: ``eval`` (Add) holds per-round sums
and margin histograms, ``eval_rows`` (Assign) each test row's margin and
label when the test set is small enough for an exact AUC. A worker counts
itself into a round only once its shares are stored, so a full count means a
complete round whatever server holds which slot; worker 0 then pulls the
round and computes logloss, AUC and accuracy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...data.reader import Minibatch
from ...keys import mix64
from ...kv.worker import KVWorker
from ...postoffice import Postoffice
from .model import (
    Batch,
    BatchCache,
    auc_exact,
    auc_from_histograms,
    batch_bytes,
    batch_of,
    logloss_terms,
    loss_terms,
    margin_bins,
    read_share,
    share_of_rows,
)
from .synthetic import Synthetic

if TYPE_CHECKING:
    from .app import LinearApp

SLOT_WORKERS, SLOT_ROWS, SLOT_POS, SLOT_LOSS, SLOT_LOGLOSS, SLOT_CORRECT, SLOT_TIME, \
    SLOT_EXAMPLES, SLOT_KEYS = range(9)
FIRST_BIN = 64
ROUND_SHIFT = 40  # round r's keys are mix64((r + 1) << 40 | slot or row)
# Marks in the eval table (a checkpoint holds them with the sums): worker w's
# shares of a round are in (SLOT_SCORED + w). A resumed job reads them so as
# not to add a round twice.
SLOT_SCORED = 1 << 38
TEST_SHARE = ("test share",)  # its name in the worker's BatchCache (partition paths: the others)


def round_keys(rnd: int, slots: np.ndarray) -> np.ndarray:
    """kv keys of round ``rnd``'s slots (or test row ids): spread over the ring."""
    return mix64((np.uint64(rnd + 1) << np.uint64(ROUND_SHIFT)) | slots.astype(np.uint64))


class Evaluator:
    """One worker's part of the test rounds (worker 0 also reduces them)."""

    def __init__(self, app: LinearApp, po: Postoffice, synthetic: Synthetic | None,
                 counters: dict[str, Any], report: Callable[[], None], cache: BatchCache):
        self.app, self.po, self.lc = app, po, app.lc
        self.synthetic = synthetic
        self.counters, self.report = counters, report
        self.eval_kv = KVWorker(po, "eval")
        self.rows_kv = KVWorker(po, "eval_rows")
        self.index, self.workers = po.worker_index(), po.num_workers
        self.pending_rounds: list[int] = []  # worker 0: rounds not yet reduced
        self.evals: list[dict[str, Any]] = []
        self.epochs = {e for e in range(app.epochs - 1) if app.test_rows
                       and self.lc.eval_every and (e + 1) % self.lc.eval_every == 0}
        # this worker's localised test share is kept there for the next
        # rounds, within the budget its training minibatches share
        self.cache = cache
        self._share_build: _ShareBuild | None = None

    def prepare_share(self) -> None:
        """Read and localise this worker's test share in a background thread,
        while training goes on: the first round then scores at once. numpy's
        sorts and gathers leave the GIL, so the thread runs on what the
        worker's waits for the servers leave idle. Only a share that will be
        kept for later rounds within ``[linear] cache_bytes`` is built early
        (an estimate from the test set's size), so that no share is held
        whole that would otherwise be streamed. The thread calls no MPI; what
        it shares with the main thread is h5py (serialised by its lock) and
        localisation's count of keys localised (a hint for loading a kernel)."""
        if not self.app.test_rows or not self.epochs or self._share_build is not None \
                or self.cache.get(TEST_SHARE) is not None \
                or self._share_bytes_estimate() > self.cache.budget - self.cache.used:
            return
        self._share_build = _ShareBuild(self, self.index, self.workers)

    def _share_bytes_estimate(self) -> float:
        """About what this worker's localised test share holds (see
        :func:`batch_bytes`): at most 24 bytes an entry and 16 a row, plus the
        bias entry of each row."""
        if self.synthetic is not None:
            rows, nnz = self.lc.synthetic_test_rows, self.lc.synthetic_test_rows * \
                self.lc.synthetic_nnz
        else:
            assert self.app.test is not None
            rows = sum(p.rows for p in self.app.test.partitions)
            nnz = sum(p.nnz for p in self.app.test.partitions)
        return (24.0 * (nnz + rows) + 16.0 * rows) / self.workers

    def _prepared_share(self) -> list[tuple[Batch, int]] | None:
        """The share :meth:`prepare_share` built (waiting for it), or None
        where it built none or the shares were cut anew since."""
        build, self._share_build = self._share_build, None
        if build is None:
            return None
        pieces = build.result()
        return pieces if build.cut == (self.index, self.workers) else None
    def survivors(self) -> None:
        """After a worker died, the survivors share the final scoring, and the
        rounds the dead worker never completed are left out."""
        live = self.po.live_workers()
        if len(live) == self.workers:
            return
        if self.index == 0 and self.pending_rounds:
            print(f"mpips: evaluation round(s) {self.pending_rounds} left out: "
                  f"{self.workers - len(live)} worker(s) died", flush=True)
        self.pending_rounds = []
        self.index, self.workers = live.index(self.po.rank), len(live)
        self.cache.drop(TEST_SHARE)  # the shares are cut anew

    def _test_batches(self) -> Iterator[tuple[Batch, int]]:
        """This worker's localised test share (see ``_test_share``), kept
        after the first round while it fits in ``[linear] cache_bytes``."""
        kept = self.cache.get(TEST_SHARE)
        if kept is not None:
            return iter(kept)
        built = self._prepared_share()
        pieces = built if built is not None else self._localised_share(self.index, self.workers)
        return self.cache.fill(TEST_SHARE, pieces, want=bool(self.epochs),
                               size=lambda piece: batch_bytes(piece[0]))

    def _localised_share(self, index: int, workers: int) -> Iterator[tuple[Batch, int]]:
        """:meth:`_test_share`'s pieces, localised."""
        return ((batch_of(mb, self.lc.bias), first)
                for mb, first in self._test_share(index, workers))

    def _test_share(self, index: int, workers: int) -> Iterator[tuple[Minibatch, int]]:
        """Share ``index`` of ``workers`` of the test rows in pieces, with the
        global id of each piece's first row."""
        step = self.lc.eval_batch
        if self.synthetic is not None:
            rows, _ = self.synthetic.rows(self.lc.synthetic_test_rows, 0)
            lo, hi = share_of_rows(rows.rows, index, workers)
            for a in range(lo, hi, step):
                yield rows.slice(a, min(a + step, hi)), a
            return
        assert self.app.test is not None
        chunk = self.app.cfg.data.chunk_rows
        for part in self.app.test.partitions:
            for mb in read_share(part.path, index, workers, step, chunk):
                yield mb, part.first_row + mb.first_row

    def score_round(self, epoch: int, kv: KVWorker) -> None:
        """Score this worker's test share with the current weights (table
        ``kv``) and add the partial results of round ``epoch`` to the eval tables."""
        lc = self.lc
        if self.app.cfg.checkpoint.resume and self._scored_before(epoch):
            return
        nbins = lc.auc_bins
        sums = np.zeros(FIRST_BIN + 2 * nbins)
        row_pushes: list[int] = []
        batches = self._test_batches()
        nxt = next(batches, None)
        ahead = kv.pull(nxt[0].keys) if nxt is not None else None
        while nxt is not None:
            (batch, first), ts = nxt, ahead
            nxt = next(batches, None)  # the next piece's weights travel meanwhile
            ahead = kv.pull(nxt[0].keys) if nxt is not None else None
            w = kv.wait(ts)[:, 0].astype(np.float64)
            margin = batch.X @ w
            y = batch.y
            sums[SLOT_ROWS] += y.size
            sums[SLOT_POS] += (y > 0.5).sum()
            sums[SLOT_LOSS] += loss_terms(lc.loss, margin, y).sum()
            sums[SLOT_LOGLOSS] += logloss_terms(margin, y).sum()
            sums[SLOT_CORRECT] += ((margin >= 0) == (y > 0.5)).sum()
            b = margin_bins(margin, nbins, lc.auc_span)
            sums[FIRST_BIN:FIRST_BIN + nbins] += np.bincount(b[y > 0.5], minlength=nbins)
            sums[FIRST_BIN + nbins:] += np.bincount(b[y <= 0.5], minlength=nbins)
            if self.app.exact_auc:
                keys = round_keys(epoch, np.arange(first, first + y.size))
                order = np.argsort(keys)
                row_pushes.append(self.rows_kv.push(keys[order],
                                                    np.column_stack([margin, y])[order]))
        sums[SLOT_TIME] = time.monotonic() - self.po.started
        sums[SLOT_EXAMPLES] = self.counters["examples"]
        sums[SLOT_KEYS] = self.counters["keys"]
        slots = np.flatnonzero(sums)
        keys = round_keys(epoch, slots)
        order = np.argsort(keys)
        self.eval_kv.wait(self.eval_kv.push(keys[order], sums[slots][order]))
        for ts in row_pushes:
            self.rows_kv.wait(ts)
        # Count this worker in only once its shares are stored.
        marks = round_keys(epoch, np.array([SLOT_WORKERS, SLOT_SCORED + self.index]))
        order = np.argsort(marks)
        self.eval_kv.wait(self.eval_kv.push(marks[order], np.ones(2)))
        if self.index == 0:
            self.pending_rounds.append(epoch)

    def _scored_before(self, rnd: int) -> bool:
        """A resumed job: whether this worker's shares of round ``rnd`` came
        back with the checkpoint. Then they are not added again; worker 0
        still reduces the round (reducing only reads it; the scheduler writes
        each round's line once)."""
        mark = round_keys(rnd, np.array([SLOT_SCORED + self.index]))
        if not self.eval_kv.wait(self.eval_kv.pull(mark))[0, 0]:
            return False
        if self.index == 0:
            self.pending_rounds.append(rnd)
        return True

    def reduce_ready_rounds(self, block: bool) -> None:
        """Worker 0: compute the metrics of every round all workers have added."""
        while self.pending_rounds:
            rnd = self.pending_rounds[0]
            count = self.eval_kv.wait(self.eval_kv.pull(
                round_keys(rnd, np.array([SLOT_WORKERS]))))[0, 0]
            if count < self.workers:
                if not block:
                    return
                raise RuntimeError(f"evaluation round {rnd}: {count:.0f} of "
                                   f"{self.workers} workers reported after the barrier")
            self.pending_rounds.pop(0)
            self._reduce(rnd)

    def _reduce(self, rnd: int) -> None:
        lc, nbins = self.lc, self.lc.auc_bins
        slots = np.arange(FIRST_BIN + 2 * nbins)
        keys = round_keys(rnd, slots)
        order = np.argsort(keys)
        sums = np.empty(slots.size)
        sums[order] = self.eval_kv.wait(self.eval_kv.pull(keys[order]))[:, 0]
        rows = sums[SLOT_ROWS]
        ev: dict[str, Any] = {
            "round": rnd, "epoch": rnd + 1, "time": sums[SLOT_TIME] / self.workers,
            "examples": int(sums[SLOT_EXAMPLES]), "rows": int(rows),
            "positives": int(sums[SLOT_POS]),
            "logloss": sums[SLOT_LOGLOSS] / rows if lc.loss == "logistic" else None,
            "loss": sums[SLOT_LOSS] / rows, "accuracy": sums[SLOT_CORRECT] / rows}
        ev["keys_per_s"] = sums[SLOT_KEYS] / max(ev["time"], 1e-9) / self.workers
        ev["examples_per_s"] = ev["examples"] / max(ev["time"], 1e-9)
        if self.app.exact_auc:
            ids = np.arange(self.app.test_rows)
            keys = round_keys(rnd, ids)
            order = np.argsort(keys)
            got = self.rows_kv.wait(self.rows_kv.pull(keys[order]))
            ev["auc"], ev["auc_method"] = auc_exact(got[:, 0], got[:, 1]), "exact"
        else:
            auc, bound = auc_from_histograms(sums[FIRST_BIN:FIRST_BIN + nbins],
                                             sums[FIRST_BIN + nbins:])
            ev.update(auc=auc, auc_method="histogram", auc_tie_bound=bound)
        self.evals.append(ev)
        final = rnd == self.app.epochs - 1
        self.counters.update({f"test_{k}": v for k, v in ev.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.counters["test_final"] = int(final)
        self.report()


class _ShareBuild:
    """A test share being read and localised in a thread of its own."""

    def __init__(self, ev: Evaluator, index: int, workers: int):
        self.cut = (index, workers)  # the share it builds
        self._pieces: list[tuple[Batch, int]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, args=(ev, index, workers),
                                        name="mpips-test-share", daemon=True)
        self._thread.start()

    def _build(self, ev: Evaluator, index: int, workers: int) -> None:
        try:
            self._pieces = list(ev._localised_share(index, workers))
        except BaseException as e:  # raised where the share is used
            self._error = e

    def result(self) -> list[tuple[Batch, int]]:
        """The pieces, once built; the build's error, if it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._pieces
