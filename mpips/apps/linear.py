"""Sparse logistic regression: workers compute gradients, servers hold weights.

Each worker streams minibatches, localises their keys (sorted unique keys and
local column indices), pulls the weights of those keys, computes the logistic
loss gradient with sparse matrix products, and pushes it; the servers apply
it with the table's handle (SGD or AdaGrad). The pull of the next minibatch's
weights is sent before the current gradient is computed, so transfer and
compute overlap, and at most ``max_inflight`` requests are outstanding.

Until the HDF5 data path lands, ``data = "synthetic"`` makes rows from a
planted sparse logistic model (seeded, different rows on every worker), and a
shared test set that the workers score in parallel: logloss and accuracy are
summed, AUC comes from score histograms summed over workers.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..config import Option, non_negative, positive, section
from ..kv.handles import SGD, AdaGrad
from ..kv.table import Table
from ..kv.worker import KVWorker
from ..postoffice import WORKERS, Postoffice
from ..ring import hash_feature
from .base import App

section("linear", {
    "data": Option(str, "synthetic", "training data: 'synthetic' (built in)"),
    "algorithm": Option(str, "adagrad", "server update", choices=("sgd", "adagrad")),
    "lr": Option(float, 0.1, "learning rate", positive),
    "l2": Option(float, 0.0, "L2 penalty added to gradients", non_negative),
    "minibatch": Option(int, 1000, "rows per minibatch", positive),
    "epochs": Option(int, 2, "passes over the training rows", positive),
    "max_inflight": Option(int, 2, "requests a worker keeps outstanding", positive),
    "report_interval": Option(float, 1.0, "seconds between worker progress reports", positive),
    "synthetic_rows": Option(int, 100_000, "synthetic training rows per worker", positive),
    "synthetic_test_rows": Option(int, 20_000, "synthetic test rows (shared)", positive),
    "synthetic_features": Option(int, 100_000, "synthetic feature ids", positive),
    "synthetic_nnz": Option(int, 20, "nonzero features per synthetic row", positive),
})

AUC_BINS = 1000


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def logloss_sum(margin: np.ndarray, y: np.ndarray) -> float:
    """Sum of log(1 + exp(-s m)) with s = 2y - 1, computed stably."""
    return float(np.logaddexp(0.0, -(2.0 * y - 1.0) * margin).sum())


def localise(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A minibatch's keys as sorted unique keys plus local column indices."""
    keys, local = np.unique(indices, return_inverse=True)
    return keys, local.astype(np.int32, copy=False)


def gradient(X: sp.csr_matrix, y: np.ndarray, w: np.ndarray, l2: float
             ) -> tuple[np.ndarray, float, np.ndarray]:
    """Mean logistic-loss gradient over the rows, loss sum, and margins."""
    margin = X @ w
    residual = sigmoid(margin) - y
    grad = (X.T @ residual) / X.shape[0] + l2 * w
    return grad, logloss_sum(margin, y), margin


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from score histograms: P(score_pos > score_neg), ties count half."""
    npos, nneg = pos.sum(), neg.sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (npos * nneg))


# ---- built-in synthetic data ------------------------------------------------------
class Synthetic:
    """Rows from a planted sparse logistic model; feature popularity falls off
    as a power law, as in click logs."""

    def __init__(self, features: int, nnz: int, seed: int):
        rng = np.random.default_rng([seed, 0])
        self.features, self.nnz, self.seed = features, nnz, seed
        self.w_true = rng.normal(0.0, 1.0, features) * (rng.random(features) < 0.3)

    def rows(self, n: int, stream: int) -> Rows:
        rng = np.random.default_rng([self.seed, 1, stream])
        ids = (self.features * rng.random((n, self.nnz)) ** 2.0).astype(np.int64)
        ids = np.minimum(ids, self.features - 1)
        ids.sort(axis=1)
        margin = self.w_true[ids].sum(axis=1) * (3.0 / np.sqrt(self.nnz))
        y = (rng.random(n) < sigmoid(margin)).astype(np.float64)
        indptr = np.arange(0, n * self.nnz + 1, self.nnz, dtype=np.int64)
        rows = Rows(indptr, hash_feature(ids.ravel()), None, y)
        rows.true_margin = margin
        return rows


class Rows:
    """Rows in CSR form with uint64 keys as column ids (values None: all 1)."""

    def __init__(self, indptr: np.ndarray, keys: np.ndarray, values: np.ndarray | None,
                 label: np.ndarray):
        self.indptr, self.keys, self.values, self.label = indptr, keys, values, label
        self.true_margin: np.ndarray | None = None  # synthetic rows know the truth

    def __len__(self) -> int:
        return int(self.label.size)

    def take(self, a: int, b: int) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
        """Rows a..b as (sorted unique keys, CSR over those keys, labels)."""
        lo, hi = self.indptr[a], self.indptr[b]
        keys, local = localise(self.keys[lo:hi])
        data = np.ones(hi - lo) if self.values is None else self.values[lo:hi]
        X = sp.csr_matrix((data, local, self.indptr[a:b + 1] - lo),
                          shape=(b - a, keys.size))
        return keys, X, self.label[a:b]


# ---- the app -----------------------------------------------------------------------
class LinearApp(App):
    name = "linear"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.lc = cfg.linear
        if self.lc.data != "synthetic":
            raise ValueError(f"{cfg.source}: [linear] data = {self.lc.data!r}: only "
                             "'synthetic' is available until the HDF5 data path lands")
        self._last: tuple[float, dict[str, float]] | None = None

    def tables(self) -> list[Table]:
        handle = (AdaGrad(lr=self.lc.lr) if self.lc.algorithm == "adagrad"
                  else SGD(lr=self.lc.lr))
        return [Table("w", vdim=1, dtype="float32", handle=handle)]

    # ---- worker ----
    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        lc = self.lc
        kv = KVWorker(po, "w")
        data = Synthetic(lc.synthetic_features, lc.synthetic_nnz, self.cfg.job.seed)
        w_index = po.worker_index()
        counters = {"examples": 0, "loss_sum": 0.0, "keys": 0}
        last_report = time.monotonic()
        pushes: list[int] = []
        for epoch in range(lc.epochs):
            rows = data.rows(lc.synthetic_rows, 1 + w_index)
            batches = [rows.take(a, min(len(rows), a + lc.minibatch))
                       for a in range(0, len(rows), lc.minibatch)]
            # Pull ahead: the next minibatch's weights are on their way while
            # this one's gradient is computed.
            ahead = kv.pull(batches[0][0]) if batches else None
            for i, (keys, X, y) in enumerate(batches):
                w = kv.wait(ahead)[:, 0].astype(np.float64)
                if i + 1 < len(batches):
                    ahead = kv.pull(batches[i + 1][0])
                grad, loss, _ = gradient(X, y, w, lc.l2)
                pushes.append(kv.push(keys, grad.astype(np.float32)))
                while len(pushes) >= lc.max_inflight:
                    kv.wait(pushes.pop(0))
                counters["examples"] += y.size
                counters["loss_sum"] += loss
                counters["keys"] += keys.size
                counters["epoch"] = epoch
                if time.monotonic() - last_report >= lc.report_interval:
                    po.report(counters)
                    last_report = time.monotonic()
        for ts in pushes:
            kv.wait(ts)
        po.barrier(WORKERS)  # every worker's pushes are in before anyone evaluates
        return {"counters": counters, "test": self._evaluate(po, kv, data)}

    def _evaluate(self, po: Postoffice, kv: KVWorker, data: Synthetic) -> dict[str, Any]:
        """Score this worker's share of the test rows with the final weights."""
        test = data.rows(self.lc.synthetic_test_rows, 0)
        # Contiguous shares: worker i scores rows [i*n/W, (i+1)*n/W).
        n, i, nw = len(test), po.worker_index(), po.num_workers
        keys, X, y = test.take(i * n // nw, (i + 1) * n // nw)
        w = kv.wait(kv.pull(keys))[:, 0].astype(np.float64)
        margin = X @ w
        p = sigmoid(margin)
        bins = np.minimum((p * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        return {"rows": int(y.size), "loss_sum": logloss_sum(margin, y),
                "correct": int(((p >= 0.5) == (y > 0.5)).sum()),
                "pos_hist": np.bincount(bins[y > 0.5], minlength=AUC_BINS).tolist(),
                "neg_hist": np.bincount(bins[y <= 0.5], minlength=AUC_BINS).tolist()}

    # ---- scheduler ----
    def _planted_reference(self) -> dict[str, float]:
        """Test metrics of the planted model itself: the best a model can do."""
        data = Synthetic(self.lc.synthetic_features, self.lc.synthetic_nnz, self.cfg.job.seed)
        test = data.rows(self.lc.synthetic_test_rows, 0)
        margin, y, _n = test.true_margin, test.label, len(test)
        p = sigmoid(margin)
        bins = np.minimum((p * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        return {"rows": int(y.size), "loss_sum": logloss_sum(margin, y),
                "correct": int(((p >= 0.5) == (y > 0.5)).sum()),
                "pos_hist": np.bincount(bins[y > 0.5], minlength=AUC_BINS).tolist(),
                "neg_hist": np.bincount(bins[y <= 0.5], minlength=AUC_BINS).tolist()}

    # ---- scheduler ----
    def _planted_reference(self) -> dict[str, float]:
        """Test metrics of the planted model itself: the best a model can do."""
        data = Synthetic(self.lc.synthetic_features, self.lc.synthetic_nnz, self.cfg.job.seed)
        rng = np.random.default_rng([self.cfg.job.seed, 1, 0])
        n = self.lc.synthetic_test_rows
        ids = np.minimum((data.features * rng.random((n, data.nnz)) ** 2.0).astype(np.int64),
                         data.features - 1)
        margin = data.w_true[ids].sum(axis=1) * (3.0 / np.sqrt(data.nnz))
        y = (rng.random(n) < sigmoid(margin)).astype(np.float64)
        p = sigmoid(margin)
        bins = np.minimum((p * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        return {"logloss": logloss_sum(margin, y) / n,
                "accuracy": float(((p >= 0.5) == (y > 0.5)).mean()),
                "auc": auc_from_histograms(np.bincount(bins[y > 0.5], minlength=AUC_BINS),
                                           np.bincount(bins[y <= 0.5], minlength=AUC_BINS))}

    def progress_line(self, totals: dict[str, float], elapsed: float) -> str:
        prev_t, prev = self._last or (0.0, {})
        self._last = (elapsed, dict(totals))
        dt = max(elapsed - prev_t, 1e-9)
        dex = totals.get("examples", 0) - prev.get("examples", 0)
        dloss = totals.get("loss_sum", 0) - prev.get("loss_sum", 0)
        dkeys = totals.get("keys", 0) - prev.get("keys", 0)
        loss = dloss / dex if dex else float("nan")
        return (f"examples {totals.get('examples', 0):.3g} ({dex / dt:.3g}/s) "
                f"keys/s {dkeys / dt:.3g} train loss {loss:.4f}")

    def finish(self, po, workers, servers, elapsed) -> None:
        tests = [w["test"] for w in workers]
        rows = sum(t["rows"] for t in tests)
        pos = np.sum([t["pos_hist"] for t in tests], axis=0)
        neg = np.sum([t["neg_hist"] for t in tests], axis=0)
        examples = sum(w["counters"]["examples"] for w in workers)
        metrics = {"time": round(elapsed, 3), "epoch": self.lc.epochs, "examples": examples,
                   "split": "test", "rows": rows,
                   "logloss": sum(t["loss_sum"] for t in tests) / rows,
                   "accuracy": sum(t["correct"] for t in tests) / rows,
                   "auc": auc_from_histograms(pos, neg),
                   "examples_per_s": examples / elapsed,
                   "model_keys": sum(s["keys"] for s in servers)}
        out = self.cfg.job.output
        os.makedirs(out, exist_ok=True)
        metrics["planted"] = self._planted_reference()
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
        planted = self._planted_reference()
        print(f"planted model (the truth the data was drawn from): logloss "
              f"{planted['logloss']:.4f} accuracy {planted['accuracy']:.4f} "
              f"AUC {planted['auc']:.4f}", flush=True)
        print(f"test: logloss {metrics['logloss']:.4f} accuracy {metrics['accuracy']:.4f} "
              f"AUC {metrics['auc']:.4f} over {rows} rows; {metrics['model_keys']} weights "
              f"on {len(servers)} server(s); metrics in {out}/metrics.jsonl", flush=True)
