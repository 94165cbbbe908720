"""Test jobs for tests/test_consistency.py: ``python consistency_job.py MODE [-o ...]``.

Modes:
  tasks  every worker runs iterations 0..T-1 (an IterationQueue) under the job's
         [consistency] policy; a task pushes +1 (tagged with the task) and
         worker MPIPS_TEST_STRAGGLER (index, default 1) sleeps MPIPS_TEST_SLEEP
         seconds in each of its tasks. The scheduler's tasks.jsonl is the log
         the test checks.
  sgd    synchronous SGD with server-side aggregation: iteration t, every worker
         pulls the weights of its minibatch t (tagged t), computes a least
         squares gradient on it and pushes it aggregated; the server sums the
         workers' pushes and applies SGD once. Worker 0 writes the final
         weights to OUTPUT/weights.npy. :func:`reference` is the same in one process.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from mpips import config
from mpips.app import App, Table
from mpips.consistency import IterationQueue
from mpips.keys import mix64
from mpips.kv import SGD, Add
from mpips.kv.worker import KVWorker
from mpips.postoffice import WORKERS
from mpips.runtime import run

ITERATIONS = int(os.environ.get("MPIPS_TEST_ITERATIONS", "24"))
FEATURES, NNZ, ROWS, LR = 500, 8, 64, 0.05


def minibatch(worker: int, t: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique keys, a dense (rows, keys) design and targets of worker's batch t."""
    rng = np.random.default_rng([seed, worker, t])
    ids = np.unique(rng.integers(0, FEATURES, ROWS * NNZ))
    keys = np.sort(mix64(ids.astype(np.uint64)))
    X = (rng.random((ROWS, keys.size)) < NNZ / keys.size) * rng.normal(size=(ROWS, keys.size))
    y = rng.normal(size=ROWS)
    return keys, X, y


def gradient(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (X.T @ (X @ w.astype(np.float64) - y) / y.size).astype(np.float32)


def reference(workers: int, seed: int, iterations: int = ITERATIONS) -> dict[int, float]:
    """Single-process synchronous SGD: the same float32 operations in the same order."""
    w: dict[int, np.float32] = {}
    lr = np.float32(LR)
    for t in range(iterations):
        batches = [minibatch(r, t, seed) for r in range(workers)]
        grads = [gradient(X, y, np.array([w.get(int(k), np.float32(0)) for k in keys],
                                         np.float32)) for keys, X, y in batches]
        total: dict[int, np.float32] = {}
        for (keys, _, _), g in zip(batches, grads, strict=True):  # worker order
            for k, v in zip(keys.tolist(), g.tolist(), strict=True):
                total[k] = np.float32(total[k] + np.float32(v)) if k in total \
                    else np.float32(v)
        for k, g in total.items():
            w[k] = np.float32(w.get(k, np.float32(0)) - lr * g)
    return w


class ConsistencyJob(App):
    name = "consistency-test"

    def __init__(self, cfg, mode: str):
        super().__init__(cfg)
        self.mode = mode

    def tables(self):
        return [Table("c", 1, "float32", Add()), Table("w", 1, "float32", SGD(lr=LR))]

    def work_queue(self):
        return IterationQueue(ITERATIONS)

    def run_worker(self, po):
        index = po.worker_index()
        if self.mode == "tasks":
            kv = KVWorker(po, "c")
            slow = index == int(os.environ.get("MPIPS_TEST_STRAGGLER", "1"))
            pause = float(os.environ.get("MPIPS_TEST_SLEEP", "0.02"))
            key = np.array([mix64(np.uint64(index))], np.uint64)
            task = po.next_task()
            while task is not None:
                if slow:
                    time.sleep(pause)
                kv.push(key, np.ones((1, 1), np.float32))
                task = po.next_task(done=task)  # waits for the push's ack first
            return {}
        kv = KVWorker(po, "w", aggregate=True)
        task = po.next_task()
        while task is not None:
            keys, X, y = minibatch(index, task["iteration"], self.cfg.job.seed)
            w = kv.wait(kv.pull(keys, task=task["ts"]))[:, 0]
            kv.push(keys, gradient(X, y, w)[:, None], task=task["ts"])
            task = po.next_task(done=task)
        po.barrier(WORKERS)
        if index == 0:
            keys = np.unique(np.concatenate([
                minibatch(r, t, self.cfg.job.seed)[0] for r in range(po.num_workers)
                for t in range(ITERATIONS)]))
            w = kv.wait(kv.pull(keys))[:, 0]
            out = Path(self.cfg.job.output)
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / "weights.npy", np.stack([keys.view(np.float64), w.astype(
                np.float64)]))
        return {}


if __name__ == "__main__":
    mode = sys.argv[1]
    overrides = [a for a in sys.argv[2:] if a != "-o"]
    cfg = config.load(None, overrides)
    run(cfg, ConsistencyJob(cfg, mode))
