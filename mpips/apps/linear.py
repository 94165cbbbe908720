"""Sparse linear models (logistic regression first): workers compute gradients,
servers hold weights and optimizer state.

Training. A worker takes partitions from the scheduler's work queue
(``po.next_task``), reads each in minibatches, localises their keys (sorted
unique keys + local columns), pulls the weights of those keys, computes the
gradient of the mean loss with sparse matrix products, and pushes it; the
servers apply it with the table's update handle (SGD with a decaying rate,
AdaGrad, FTRL-Proximal; L1 as a proximal step on the server, L2 in the
gradient, or both inside FTRL). The next minibatch's weights are pulled before
the current gradient is computed (pull ahead), with at most ``max_inflight``
requests outstanding. Updates are asynchronous; block proximal gradient with
bounded delay comes with the consistency issue and would be a fourth handle
plus a task policy, with the same worker loop.

Evaluation. After each ``eval_every`` epochs and at the end, every worker
scores its share of the test rows (a contiguous slice of every test
partition) and pushes partial results to two kv tables, so the servers do the
reduction: ``eval`` (Add) holds per-round sums and margin histograms,
``eval_rows`` (Assign) holds each test row's margin and label when the test
set is small enough for an exact AUC. Worker 0 pulls a round once every
worker has added its count, computes logloss, AUC, accuracy, reports them
(the scheduler's progress line and ``metrics.jsonl`` pick them up), and sends
every round in its final result. Intermediate rounds are asynchronous (each
worker scores when it has moved past the epoch); the last round runs after a
barrier on the final weights.

Outputs in ``[job] output``: ``metrics.jsonl`` (train lines at each progress
line, test lines per evaluation), ``model.h5`` (merged from the servers'
shards; see :mod:`mpips.apps.linear_model`).

``data = "synthetic"`` keeps the built-in planted model of the demo job: rows
are generated on each worker, and the final line also scores the planted model.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..app import App, Table
from ..config import ConfigError, Option, non_negative, positive, section
from ..data import load_manifest
from ..data.manifest import Manifest, ManifestError
from ..data.queue import PartitionQueue
from ..data.reader import Minibatch
from ..keys import hash_feature, mix64
from ..kv.handles import AdaGradL1, Add, Assign, DecayingSGD, FTRLProximal, Handle
from ..kv.worker import KVWorker
from ..postoffice import WORKERS, Postoffice
from .linear_model import (
    LOSSES,
    Batch,
    auc_exact,
    auc_from_histograms,
    batch_of,
    gradient,
    logloss_terms,
    loss_terms,
    margin_bins,
    metrics_of,
    read_model,
    read_share,
    share_of_rows,
    sigmoid,
    write_model,
)

ALGORITHMS = ("sgd", "adagrad", "ftrl")

section("linear", {
    "data": Option(str, "synthetic", "'synthetic' (built-in planted model) or 'partitions' "
                   "([data] train / test folders)", choices=("synthetic", "partitions")),
    "loss": Option(str, "logistic", "loss", choices=LOSSES),
    "algorithm": Option(str, "adagrad", "server update: sgd (decaying rate), adagrad, ftrl "
                        "(FTRL-Proximal)", choices=ALGORITHMS),
    "lr": Option(float, 0.1, "learning rate of sgd and adagrad", positive),
    "decay": Option(float, 0.0, "sgd: rate = lr / (1 + decay * t) ** decay_power, t = the "
                    "key's updates", non_negative),
    "decay_power": Option(float, 0.5, "sgd: exponent of the rate decay", non_negative),
    "alpha": Option(float, 0.1, "ftrl: alpha (per-coordinate rate scale)", positive),
    "beta": Option(float, 1.0, "ftrl: beta (rate smoothing)", non_negative),
    "l1": Option(float, 0.0, "L1 penalty (sgd/adagrad: prox step on the server; ftrl: its "
                 "own l1 on summed gradients)", non_negative),
    "l2": Option(float, 0.0, "L2 penalty (sgd/adagrad: l2 * w added to gradients of the mean "
                 "loss; ftrl: its own l2)", non_negative),
    "bias": Option(bool, True, "learn an intercept (a key every row has)"),
    "minibatch": Option(int, 1000, "rows per minibatch (synthetic data; partitions use "
                        "[data] minibatch)", positive),
    "epochs": Option(int, 2, "passes over the rows (synthetic data; partitions use "
                     "[data] epochs)", positive),
    "max_inflight": Option(int, 2, "requests a worker keeps outstanding (pull ahead needs "
                           ">= 2)", positive),
    "report_interval": Option(float, 1.0, "seconds between worker progress reports",
                              positive),
    "eval_every": Option(int, 1, "epochs between test evaluations (0: only at the end)",
                         non_negative),
    "eval_batch": Option(int, 20000, "rows scored per pull during evaluation", positive),
    "auc_exact_rows": Option(int, 200_000, "test sets up to this many rows get an exact "
                             "AUC; larger ones a histogram AUC", non_negative),
    "auc_bins": Option(int, 8192, "bins of the histogram AUC (margins in "
                       "[-auc_span, auc_span])", positive),
    "auc_span": Option(float, 16.0, "margin range of the AUC histogram", positive),
    "save_model": Option(bool, True, "write model.h5 in [job] output"),
    "save_state": Option(bool, False, "also write the optimizer state into model.h5"),
    "synthetic_rows": Option(int, 100_000, "synthetic training rows per worker", positive),
    "synthetic_test_rows": Option(int, 20_000, "synthetic test rows (shared)", positive),
    "synthetic_features": Option(int, 100_000, "synthetic feature ids", positive),
    "synthetic_nnz": Option(int, 20, "nonzero features per synthetic row", positive),
})

# Slots of one evaluation round in the ``eval`` table (float64 sums).
SLOT_WORKERS, SLOT_ROWS, SLOT_POS, SLOT_LOSS, SLOT_LOGLOSS, SLOT_CORRECT, SLOT_TIME, \
    SLOT_EXAMPLES, SLOT_KEYS = range(9)
FIRST_BIN = 64
ROUND_SHIFT = 40  # round r's keys are mix64((r + 1) << 40 | slot or row)


def round_keys(rnd: int, slots: np.ndarray) -> np.ndarray:
    """kv keys of round ``rnd``'s slots (or test row ids): spread over the ring."""
    return mix64((np.uint64(rnd + 1) << np.uint64(ROUND_SHIFT)) | slots.astype(np.uint64))


def make_handle(lc: Any) -> Handle:
    if lc.algorithm == "ftrl":
        return FTRLProximal(alpha=lc.alpha, beta=lc.beta, l1=lc.l1, l2=lc.l2)
    if lc.algorithm == "adagrad":
        return AdaGradL1(lr=lc.lr, l1=lc.l1)
    return DecayingSGD(lr=lc.lr, decay=lc.decay, power=lc.decay_power, l1=lc.l1)


# ---- built-in synthetic data ------------------------------------------------------
class Synthetic:
    """Rows from a planted sparse logistic model; feature popularity falls off
    as a power law, as in click logs."""

    def __init__(self, features: int, nnz: int, seed: int):
        rng = np.random.default_rng([seed, 0])
        self.features, self.nnz, self.seed = features, nnz, seed
        self.w_true = rng.normal(0.0, 1.0, features) * (rng.random(features) < 0.3)

    def rows(self, n: int, stream: int) -> tuple[Minibatch, np.ndarray]:
        """``n`` rows of stream ``stream`` (0: the test set) and their true margins."""
        rng = np.random.default_rng([self.seed, 1, stream])
        ids = (self.features * rng.random((n, self.nnz)) ** 2.0).astype(np.int64)
        ids = np.minimum(ids, self.features - 1)
        ids.sort(axis=1)
        margin = self.w_true[ids].sum(axis=1) * (3.0 / np.sqrt(self.nnz))
        y = (rng.random(n) < sigmoid(margin)).astype(np.float32)
        indptr = np.arange(0, n * self.nnz + 1, self.nnz, dtype=np.int64)
        keys = hash_feature(ids.ravel().astype(np.uint64))
        return Minibatch(y, indptr, keys, None), margin


# ---- the app -----------------------------------------------------------------------
class LinearApp(App):
    name = "linear"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.lc = lc = cfg.linear
        self.train: Manifest | None = None
        self.test: Manifest | None = None
        if lc.data == "partitions":
            self.train = self._manifest("train", required=True)
            self.test = self._manifest("test", required=False)
            self.epochs, self.minibatch = cfg.data.epochs, cfg.data.minibatch
            self.train_rows = self.train.rows
            self.test_rows = self.test.rows if self.test else 0
        else:
            self.epochs, self.minibatch = lc.epochs, lc.minibatch
            self.train_rows = lc.synthetic_rows  # per worker; the scheduler scales it
            self.test_rows = lc.synthetic_test_rows
        self.exact_auc = 0 < self.test_rows <= lc.auc_exact_rows
        # scheduler state
        self._last: tuple[float, dict[str, float]] | None = None
        self._written_rounds: set[int] = set()
        self._metrics_path = Path(cfg.job.output) / "metrics.jsonl"
        self._metrics_started = False

    def _manifest(self, key: str, required: bool) -> Manifest | None:
        folder = getattr(self.cfg.data, key)
        where = f"{self.cfg.source}: [data] {key}"
        if not folder:
            if required:
                raise ConfigError(f"{where} is empty: [linear] data = 'partitions' needs a "
                                  "converted data folder (python -m data_tools convert)")
            return None
        try:
            return load_manifest(folder)
        except ManifestError as e:
            raise ConfigError(f"{where} = {folder!r}: {e}") from None

    def tables(self) -> list[Table]:
        return [Table("w", vdim=1, dtype="float32", handle=make_handle(self.lc)),
                Table("eval", vdim=1, dtype="float64", handle=Add()),
                Table("eval_rows", vdim=2, dtype="float64", handle=Assign())]

    def work_queue(self) -> PartitionQueue | None:
        if self.train is None:
            return None
        return PartitionQueue(self.train.paths, epochs=self.cfg.data.epochs,
                              shuffle=self.cfg.data.shuffle, seed=self.cfg.job.seed)

    # ---- worker ------------------------------------------------------------------
    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        return _Worker(self, po).run()

    # ---- server ------------------------------------------------------------------
    def on_server_stop(self, po: Postoffice, server: Any) -> dict[str, Any]:
        """Write this server's share of the model; the scheduler merges the shards."""
        if not self.lc.save_model:
            return {}
        keys, values, state = server.items("w")
        out = Path(self.cfg.job.output)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f".model.shard-{po.rank}.h5"
        write_model(path, keys, values.astype(np.float64),
                    state if self.lc.save_state else None)
        return {"model_shard": str(path)}

    # ---- scheduler ----------------------------------------------------------------
    def _write_metrics(self, record: dict[str, Any]) -> None:
        self._metrics_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if self._metrics_started else "w"  # a new run starts a new file
        self._metrics_started = True
        with open(self._metrics_path, mode) as f:
            f.write(json.dumps(record) + "\n")

    def _epoch_rows(self, workers: int = 1) -> int:
        return self.train_rows * (workers if self.train is None else 1)

    def progress_line(self, totals: dict[str, float], elapsed: float) -> str:
        prev_t, prev = self._last or (0.0, {})
        self._last = (elapsed, dict(totals))
        dt = max(elapsed - prev_t, 1e-9)
        examples = totals.get("examples", 0)
        dex = examples - prev.get("examples", 0)
        dloss = totals.get("loss_sum", 0) - prev.get("loss_sum", 0)
        dkeys = totals.get("keys", 0) - prev.get("keys", 0)
        loss = dloss / dex if dex else float("nan")
        per_epoch = self._epoch_rows(int(totals.get("workers", 1)))
        total = per_epoch * self.epochs
        rate = examples / max(elapsed, 1e-9)
        line = (f"examples {examples:.4g} ({dex / dt:.3g}/s) epoch "
                f"{examples / per_epoch:.2f}/{self.epochs} keys/s {dkeys / dt:.3g} "
                f"train loss {loss:.4f}")
        if "test_auc" in totals:
            line += (f" | test AUC {totals['test_auc']:.4f} acc "
                     f"{totals['test_accuracy']:.4f} (epoch {totals['test_epoch']:.0f})")
        if rate > 0 and examples < total:
            line += f" | ETA {(total - examples) / rate:.0f} s"
        if dex:
            self._write_metrics({"time": round(elapsed, 3), "epoch": examples / per_epoch,
                                 "examples": int(examples), "split": "train", "loss": loss,
                                 "examples_per_s": dex / dt, "keys_per_s": dkeys / dt})
        rnd = totals.get("test_round")
        if rnd is not None and int(rnd) not in self._written_rounds \
                and not totals.get("test_final"):
            record: dict[str, Any] = {k[5:]: v for k, v in totals.items()
                                      if k.startswith("test_") and k != "test_final"}
            for k in ("round", "epoch", "rows", "positives", "examples"):
                record[k] = int(record.get(k, 0))
            record["auc_method"] = "exact" if self.exact_auc else "histogram"
            self._written_rounds.add(int(rnd))
            self._write_metrics(_test_record(record))
        return line

    def finish(self, po, workers, servers, elapsed) -> None:
        evals = next((w["evals"] for w in workers if w.get("evals")), [])
        examples = sum(w.get("counters", {}).get("examples", 0) for w in workers)
        for ev in evals[:-1]:  # rounds the progress lines missed
            if ev["round"] not in self._written_rounds:
                self._written_rounds.add(ev["round"])
                self._write_metrics(_test_record(ev))
        final: dict[str, Any] = {}
        if evals:
            final = dict(evals[-1], final=True, job_seconds=round(elapsed, 3),
                         train_examples_per_s=examples / elapsed)
            if self.lc.data == "synthetic":
                final["planted"] = self._planted_reference()
        shards = [s["model_shard"] for s in servers if s.get("model_shard")]
        model_path = Path(self.cfg.job.output) / "model.h5"
        model_keys = self._merge_model(shards, model_path, examples) if shards else 0
        if final:
            final["model_keys"] = model_keys
            self._write_metrics(_test_record(final))
        out = self.cfg.job.output
        if "planted" in final:
            p = final["planted"]
            print(f"planted model (the truth the data was drawn from): logloss "
                  f"{p['logloss']:.4f} accuracy {p['accuracy']:.4f} AUC {p['auc']:.4f}",
                  flush=True)
        if final:
            logloss = final.get("logloss")
            print(f"test: logloss {logloss if logloss is None else round(logloss, 4)} "
                  f"accuracy {final['accuracy']:.4f} AUC {final['auc']:.4f} "
                  f"({final['auc_method']}) over {final['rows']} rows", flush=True)
        print(f"{examples} examples in {elapsed:.1f} s ({examples / elapsed:.4g}/s); "
              f"{model_keys} weights" + (f" in {model_path}" if shards else "")
              + f"; metrics in {out}/metrics.jsonl", flush=True)

    def _merge_model(self, shards: list[str], path: Path, examples: int) -> int:
        parts = [read_model(s) for s in shards]
        keys = np.concatenate([p.keys for p in parts])
        keys, first = np.unique(keys, return_index=True)  # replicas: keep one copy
        weights = np.concatenate([p.weights for p in parts])[first]
        state = {n: np.concatenate([p.state[n] for p in parts])[first]
                 for n in parts[0].state}
        write_model(path, keys, weights, state,
                    {"config": self.cfg.as_dict(), "source": self.cfg.source,
                     "loss": self.lc.loss, "algorithm": self.lc.algorithm,
                     "bias": self.lc.bias, "examples": int(examples)})
        for s in shards:
            os.remove(s)
        return int(keys.size)

    def _planted_reference(self) -> dict[str, float]:
        """Test metrics of the planted model itself: the best a model can do."""
        data = Synthetic(self.lc.synthetic_features, self.lc.synthetic_nnz, self.cfg.job.seed)
        rows, margin = data.rows(self.lc.synthetic_test_rows, 0)
        m = metrics_of(margin, rows.labels.astype(np.float64), "logistic")
        return {"logloss": m["logloss"], "accuracy": m["accuracy"], "auc": m["auc"]}


def _test_record(ev: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl test line: the documented keys first."""
    out = {"time": ev.get("time"), "epoch": ev.get("epoch"),
           "examples": int(ev.get("examples", 0)), "split": "test"}
    out.update({k: v for k, v in ev.items() if k not in out})
    return out


# ---- the worker loop ---------------------------------------------------------------
class _Worker:
    def __init__(self, app: LinearApp, po: Postoffice):
        self.app, self.po, self.lc = app, po, app.lc
        self.kv = KVWorker(po, "w")
        self.eval_kv = KVWorker(po, "eval")
        self.rows_kv = KVWorker(po, "eval_rows")
        self.index, self.workers = po.worker_index(), po.num_workers
        self.counters: dict[str, Any] = {"examples": 0, "loss_sum": 0.0, "keys": 0,
                                         "epoch": 0, "workers": 1}
        self.inflight: deque[int] = deque()
        self.last_report = time.monotonic()
        self.pending_rounds: list[int] = []  # worker 0: rounds not yet reduced
        self.evals: list[dict[str, Any]] = []
        self.eval_epochs = {e for e in range(app.epochs - 1) if app.test_rows
                            and self.lc.eval_every and (e + 1) % self.lc.eval_every == 0}
        self.synthetic = None
        if self.lc.data == "synthetic":
            self.synthetic = Synthetic(self.lc.synthetic_features, self.lc.synthetic_nnz,
                                       app.cfg.job.seed)

    # ---- the whole job of one worker ----
    def run(self) -> dict[str, Any]:
        epoch = 0
        for task_epoch, batches in self._tasks():
            while epoch < task_epoch:  # moved past an epoch: score it (asynchronously)
                if epoch in self.eval_epochs:
                    self._score_round(epoch)
                epoch += 1
            self.counters["epoch"] = task_epoch
            self._train(batches)
            self._reduce_ready_rounds(block=False)
        self._drain()
        last = self.app.epochs - 1
        while epoch < last:  # epochs this worker had no part of at the end
            if epoch in self.eval_epochs:
                self._score_round(epoch)
            epoch += 1
        # Every worker's pushes are in before anyone scores the final model.
        self.po.barrier(WORKERS)
        self._survivors()
        if self.app.test_rows:
            self._score_round(last)
        self.po.barrier(WORKERS)  # every share of the last round is in
        self._reduce_ready_rounds(block=True)
        self.po.report(self.counters)
        return {"counters": self.counters, "evals": self.evals}

    def _survivors(self) -> None:
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

    def _tasks(self) -> Iterator[tuple[int, Iterator[Batch]]]:
        """(epoch, minibatches) of each piece of work: partitions from the
        scheduler's queue, or this worker's synthetic rows once per epoch."""
        bias, mb_rows = self.lc.bias, self.app.minibatch
        if self.synthetic is not None:
            rows, _ = self.synthetic.rows(self.lc.synthetic_rows, 1 + self.index)
            for epoch in range(self.app.epochs):
                yield epoch, (batch_of(rows.slice(a, min(rows.rows, a + mb_rows)), bias)
                              for a in range(0, rows.rows, mb_rows))
            return
        from ..data.reader import read_minibatches
        chunk = max(mb_rows, self.app.cfg.data.chunk_rows // mb_rows * mb_rows)
        task = self.po.next_task()
        while task is not None:
            yield task["epoch"], (batch_of(mb, bias) for mb in
                                  read_minibatches([task["path"]], mb_rows, chunk))
            self._drain()  # a task is done when its pushes are acknowledged
            task = self.po.next_task(done=task)

    # ---- training ----
    def _bound(self, room: int) -> None:
        """Wait for the oldest requests until ``room`` more fit under max_inflight."""
        while self.inflight and len(self.inflight) + room > self.lc.max_inflight:
            self.kv.wait(self.inflight.popleft())

    def _train(self, batches: Iterator[Batch]) -> None:
        lc, kv, c = self.lc, self.kv, self.counters
        l2 = 0.0 if lc.algorithm == "ftrl" else lc.l2  # ftrl applies its own l2
        nxt = next(batches, None)
        ahead = kv.pull(nxt.keys) if nxt is not None else None
        while nxt is not None:
            cur, cur_ts = nxt, ahead
            w = kv.wait(cur_ts)[:, 0].astype(np.float64)
            # Pull ahead: the next minibatch's weights travel while this
            # gradient is computed.
            nxt = next(batches, None)
            if nxt is not None:
                self._bound(1)
                ahead = kv.pull(nxt.keys)
            mask = None
            if l2 and cur.bias >= 0:
                mask = np.ones(cur.keys.size)
                mask[cur.bias] = 0.0  # the intercept is not penalised
            grad, loss, _ = gradient(lc.loss, cur.X, cur.y, w, l2, mask)
            if lc.algorithm == "ftrl":
                grad *= cur.rows  # sums, as FTRL's per-example rounds: l1, l2 keep their units
            self._bound(1 + (nxt is not None))
            self.inflight.append(kv.push(cur.keys, grad.astype(np.float32)))
            c["examples"] += cur.rows
            c["loss_sum"] += loss
            c["keys"] += 2 * cur.keys.size
            if time.monotonic() - self.last_report >= lc.report_interval:
                self.po.report(self.counters)
                self.last_report = time.monotonic()

    def _drain(self) -> None:
        while self.inflight:
            self.kv.wait(self.inflight.popleft())

    # ---- evaluation ----
    def _test_share(self) -> Iterator[tuple[Minibatch, int]]:
        """This worker's test rows in pieces, with the global id of each piece's first row."""
        step = self.lc.eval_batch
        if self.synthetic is not None:
            rows, _ = self.synthetic.rows(self.lc.synthetic_test_rows, 0)
            lo, hi = share_of_rows(rows.rows, self.index, self.workers)
            for a in range(lo, hi, step):
                yield rows.slice(a, min(a + step, hi)), a
            return
        assert self.app.test is not None
        chunk = self.app.cfg.data.chunk_rows
        for part in self.app.test.partitions:
            for mb in read_share(part.path, self.index, self.workers, step, chunk):
                yield mb, part.first_row + mb.first_row

    def _score_round(self, epoch: int) -> None:
        """Score this worker's test share with the current weights and add the
        partial results of round ``epoch`` to the eval tables."""
        lc, kv = self.lc, self.kv
        nbins = lc.auc_bins
        sums = np.zeros(FIRST_BIN + 2 * nbins)
        row_pushes: list[int] = []
        for mb, first in self._test_share():
            batch = batch_of(mb, lc.bias)
            w = kv.wait(kv.pull(batch.keys))[:, 0].astype(np.float64)
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
        elapsed = time.monotonic() - self.po.started
        sums[SLOT_TIME] = elapsed
        sums[SLOT_EXAMPLES] = self.counters["examples"]
        sums[SLOT_KEYS] = self.counters["keys"]
        slots = np.flatnonzero(sums)
        keys = round_keys(epoch, slots)
        order = np.argsort(keys)
        self.eval_kv.wait(self.eval_kv.push(keys[order], sums[slots][order]))
        for ts in row_pushes:
            self.rows_kv.wait(ts)
        # Count this worker in only once its shares are stored: a full count
        # then means a complete round, whatever server holds which slot.
        self.eval_kv.wait(self.eval_kv.push(round_keys(epoch, np.array([SLOT_WORKERS])),
                                            np.ones(1)))
        if self.index == 0:
            self.pending_rounds.append(epoch)

    def _reduce_ready_rounds(self, block: bool) -> None:
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
        self.po.report(self.counters)
        self.last_report = time.monotonic()
