"""L1-regularised logistic regression by delayed block proximal gradient
(``app = "bpg"``): the batch algorithm of the parameter server paper
(Li et al., OSDI 2014, Algorithm 3), with the consistency policy of the job.

Objective: ``sum_i log(1 + exp(-s_i x_i . w)) + l1 * |w|_1`` over the whole
training set (s in {-1, +1}).

Features are cut into ``blocks`` by key (``key % blocks``: keys are hashed,
so blocks are even). Iteration t updates block ``b = t % blocks``. The
scheduler issues iteration t to every worker (an
:class:`~mpips.consistency.IterationQueue`) once the policy allows it:
``sequential`` waits for iteration t - 1 to finish everywhere,
``bounded_delay:tau`` for t - tau - 1, ``eventual`` for nothing.

Worker r, iteration t: with its margins ``m = X_r w`` (as far as its pulls have
come back), compute the block's gradient ``g = X_rb^T (p - y)`` and diagonal
curvature bound ``h = (X_rb^2)^T (p (1 - p) k)`` (k: each row's nonzeros in
the block, which makes the diagonal bound the block's Hessian), push ``[g, h]`` aggregated (the
servers sum the pushes of iteration t from all workers), pull the block's new
weights, and without waiting for them ask for the next iteration. When the
pull comes back the worker moves its margins by ``X_rb (w_new - w_old)`` and
reports iteration t done. Iterations in flight are the delay: the next
block's gradient is computed on margins that miss the blocks still on their
way, never more than tau iterations' worth.

Servers, once every worker pushed iteration t: the proximal step per
coordinate, ``u = w - step * g / (h + eps)``,
``w = sign(u) max(|u| - step * l1 / (h + eps), 0)`` (table ``w``: column 0 the
weight, column 1 the last curvature).

Stragglers are injected: each task sleeps ``task_sleep`` seconds (the work a
bigger data set would take), and a straggling worker sleeps
``straggler_sleep`` more with probability ``straggler_prob``.

Outputs in ``[job] output/metrics.jsonl``: one ``split = "train"`` line per
iteration (objective, loss, |w|_1, nonzeros, time: the time the last worker
finished it), then a final line with idle fractions per worker (measured on
the workers: time waiting for the scheduler to issue a task / run time) and,
with ``target`` > 0, the time the objective first reached it.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..app import App, Table
from ..config import ConfigError, Option, non_negative, positive, section
from ..consistency import IterationQueue
from ..data import load_manifest, localise
from ..data.manifest import ManifestError
from ..handles import Handle
from ..kv.worker import KVWorker
from .linear.model import logloss_terms, read_share, sigmoid

# scipy.sparse is imported where a matrix is made, so that the ranks that
# never make one (the scheduler, the servers) start without importing it.
if TYPE_CHECKING:
    import scipy.sparse as sp

section("bpg", {
    "data": Option(str, "partitions", "'partitions' ([data] train) or 'synthetic' (the "
                   "linear app's planted model)", choices=("partitions", "synthetic")),
    "blocks": Option(int, 8, "feature blocks; iteration t updates block t % blocks", positive),
    "passes": Option(int, 10, "iterations = passes * blocks", positive),
    "l1": Option(float, 1.0, "L1 penalty on the summed (not mean) logistic loss",
                 non_negative),
    "step": Option(float, 1.0, "scale of the diagonal Newton step (< 1 damps it)", positive),
    "eps": Option(float, 1e-4, "added to the curvature (keys with no curvature)", positive),
    "task_sleep": Option(float, 0.0, "seconds every task sleeps (simulated work)",
                         non_negative),
    "straggler_sleep": Option(float, 0.0, "extra seconds a straggling task sleeps",
                              non_negative),
    "straggler_prob": Option(float, 0.0, "probability that a task of a straggler worker "
                             "straggles", lambda v: None if 0 <= v <= 1 else "must be in "
                             "[0, 1]"),
    "stragglers": Option(list, [], "worker indices that straggle ([] = every worker)"),
    "target": Option(float, 0.0, "report the time the objective first reached this "
                     "(0: off)", non_negative),
    "synthetic_rows": Option(int, 20_000, "synthetic rows per worker", positive),
    "synthetic_features": Option(int, 50_000, "synthetic feature ids", positive),
    "synthetic_nnz": Option(int, 20, "nonzeros per synthetic row", positive),
})


@dataclass(frozen=True)
class BlockProx(Handle):
    """Server update of one aggregated iteration: pushed ``[g, h]`` per key,
    stored ``[w, h]``. A diagonal Newton step, then the L1 proximal step."""

    l1: float = 1.0
    step: float = 1.0
    eps: float = 1e-4

    def __call__(self, value, pushed, state):
        g, h = pushed[:, 0], pushed[:, 1]
        scale = self.step / (h + self.eps)
        u = value[:, 0] - scale * g
        value[:, 0] = np.sign(u) * np.maximum(np.abs(u) - scale * self.l1, 0.0)
        value[:, 1] = h


class BpgApp(App):
    name = "bpg"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.bc = bc = cfg.bpg
        self.iterations = bc.passes * bc.blocks
        if bc.data == "partitions":
            where = f"{cfg.source}: [data] train"
            if not cfg.data.train:
                raise ConfigError(f"{where} is empty: [bpg] data = 'partitions' needs a "
                                  "converted data folder")
            try:
                self.train = load_manifest(cfg.data.train)
            except ManifestError as e:
                raise ConfigError(f"{where} = {cfg.data.train!r}: {e}") from None
        bad = [s for s in bc.stragglers if not isinstance(s, int) or s < 0]
        if bad:
            raise ConfigError(f"{cfg.source}: [bpg] stragglers = {bc.stragglers!r}: worker "
                              "indices are integers >= 0")

    def tables(self) -> list[Table]:
        return [Table("w", vdim=2, dtype="float64",
                      handle=BlockProx(l1=self.bc.l1, step=self.bc.step,
                                                 eps=self.bc.eps))]

    def work_queue(self) -> IterationQueue:
        return IterationQueue(self.iterations)

    # ---- servers: |w|_1 after each iteration, for the objective ----
    def on_server_start(self, po, server) -> None:
        self._l1_log: list[list[float]] = []
        table = po.table_ids["w"]

        def after(t_id: int, t: int) -> None:
            if t_id == table:
                w = server.items("w")[1][:, 0]
                self._l1_log.append([t, float(np.abs(w).sum()), int(np.count_nonzero(w))])

        server.on_aggregated(after)

    def on_server_stop(self, po, server) -> dict[str, Any]:
        return {"l1_log": self._l1_log}

    # ---- workers ----
    def run_worker(self, po) -> dict[str, Any]:
        return _Worker(self, po).run()

    def progress_fields(self, totals: dict[str, float], elapsed: float) -> dict[str, Any]:
        run = max(totals.get("run_seconds", 0.0), 1e-9)
        return {"iteration": round(totals.get("iterations", 0) / max(1, totals.get("workers", 1))),
                "of": self.iterations, "loss": totals.get("loss", 0.0),
                "idle": round(totals.get("idle_seconds", 0.0) / run, 4)}

    def finish(self, po, workers, servers, elapsed) -> None:
        bc = self.bc
        start = min(w["t_start"] for w in workers)
        loss: dict[int, float] = {}
        when: dict[int, float] = {}
        count: dict[int, int] = {}
        for w in workers:
            for t, at, value in w["loss_log"]:
                loss[t] = loss.get(t, 0.0) + value
                when[t] = max(when.get(t, 0.0), at - start)
                count[t] = count.get(t, 0) + 1
        l1: dict[int, float] = {}
        nnz: dict[int, int] = {}
        for s in servers:
            for t, v, n in s.get("l1_log", []):
                l1[int(t)] = l1.get(int(t), 0.0) + v
                nnz[int(t)] = nnz.get(int(t), 0) + int(n)
        records = []
        for t in sorted(loss):
            if count[t] < len(workers) or t not in l1:
                continue
            records.append({"time": round(when[t], 4), "iteration": t, "split": "train",
                            "objective": loss[t] + bc.l1 * l1[t], "loss": loss[t],
                            "l1_norm": l1[t], "nonzeros": nnz[t]})
        idle = {str(w["worker"]): w["idle_seconds"] / max(w["run_seconds"], 1e-9)
                for w in workers}
        final: dict[str, Any] = {
            "final": True, "split": "summary", "policy": po.cfg.consistency.policy,
            "iterations": self.iterations, "job_seconds": round(elapsed, 3),
            "objective": records[-1]["objective"] if records else None,
            "idle_fraction": idle,
            "idle_fraction_mean": float(np.mean(list(idle.values()))) if idle else 0.0,
            "max_view_staleness": max(w["max_view_staleness"] for w in workers)}
        if bc.target:
            hit = [r["time"] for r in records if r["objective"] <= bc.target]
            final["target"] = bc.target
            final["time_to_target"] = hit[0] if hit else None
        path = Path(self.cfg.job.output) / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        sched = path.with_name("consistency.json")  # the scheduler's task clock summary
        extra = [json.loads(sched.read_text())] if sched.exists() else []
        with open(path, "w") as f:
            for r in records + extra + [final]:
                f.write(json.dumps(r) + "\n")
        obj = final["objective"]
        print(f"bpg {final['policy']}: objective {obj if obj is None else round(obj, 3)} "
              f"after {self.iterations} iterations in {elapsed:.2f} s; idle "
              + " ".join(f"worker {w}: {v:.1%}" for w, v in idle.items())
              + (f"; objective <= {bc.target} at {final['time_to_target']} s"
                 if bc.target else "") + f"; metrics in {path}", flush=True)


# ---- the worker loop -------------------------------------------------------------
class _Worker:
    def __init__(self, app: BpgApp, po):
        self.app, self.po, self.bc = app, po, app.bc
        self.index, self.workers = po.worker_index(), po.num_workers
        X, y, keys = self._load()
        self.y, self.s = y, 2.0 * y - 1.0
        blocks = self.bc.blocks
        block_of = (keys % np.uint64(blocks)).astype(np.int64)
        Xc = X.tocsc()
        self.cols = [np.flatnonzero(block_of == b) for b in range(blocks)]
        self.Xb = [Xc[:, c] for c in self.cols]
        self.Xb2 = [x.multiply(x).tocsc() for x in self.Xb]
        # Row i's nonzeros in block b: the diagonal curvature times this bounds
        # the block's Hessian (Cauchy-Schwarz), so the step cannot overshoot
        # on correlated features of one block.
        self.row_nnz = [np.diff(x.tocsr().indptr).astype(np.float64) for x in self.Xb]
        self.keys = [keys[c] for c in self.cols]  # sorted: keys and c are
        self.w = np.zeros(keys.size)
        self.margin = np.zeros(y.size)
        self.rng = np.random.default_rng([app.cfg.job.seed, 99, self.index])
        self.straggles = not self.bc.stragglers or self.index in self.bc.stragglers

    def _load(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """This worker's share of the training rows, localised."""
        if self.bc.data == "synthetic":
            from .linear.synthetic import Synthetic
            data = Synthetic(self.bc.synthetic_features, self.bc.synthetic_nnz,
                             self.app.cfg.job.seed)
            mbs = [data.rows(self.bc.synthetic_rows, 1 + self.index)[0]]
        else:
            mbs = [mb for part in self.app.train.partitions for mb in
                   read_share(part.path, self.index, self.workers, 1 << 30,
                              self.app.cfg.data.chunk_rows)]
        sizes = [mb.indptr[-1] - mb.indptr[0] for mb in mbs]
        offsets = np.cumsum([0, *sizes])
        indptr = np.concatenate([[0]] + [mb.indptr[1:] - mb.indptr[0] + o
                                         for mb, o in zip(mbs, offsets, strict=False)])
        gkeys = np.concatenate([mb.keys for mb in mbs])
        vals = np.concatenate([np.ones(mb.keys.size) if mb.values is None
                               else mb.values.astype(np.float64) for mb in mbs])
        y = np.concatenate([mb.labels for mb in mbs]).astype(np.float64)
        y = (y > 0.5).astype(np.float64)
        uniq, cols = localise(gkeys)
        import scipy.sparse as sp
        return sp.csr_matrix((vals, cols, indptr), shape=(y.size, uniq.size)), y, uniq

    def _loss(self) -> float:
        return float(logloss_terms(self.margin, self.y).sum())

    def run(self) -> dict[str, Any]:
        po, bc = self.po, self.bc
        kv = KVWorker(po, "w", aggregate=True)
        t_start = time.time()
        begun = time.monotonic()
        inflight: deque[tuple[dict[str, Any], int, int, int]] = deque()
        loss_log: list[list[float]] = []
        idle = 0.0
        done_count = 0
        max_view_stale = 0
        last_report = begun
        po.request_task()

        def progress() -> bool:
            return bool(po.task_inbox) or (bool(inflight) and kv.ready(inflight[0][2])
                                           and kv.ready(inflight[0][3]))

        while True:
            t0 = time.monotonic()
            po.wait_until(progress, lambda: "", timeout=float("inf"))
            idle += time.monotonic() - t0
            finished = []
            while inflight and kv.ready(inflight[0][2]) and kv.ready(inflight[0][3]):
                task, b, push_ts, pull_ts = inflight.popleft()
                kv.wait(push_ts)
                w_new = kv.wait(pull_ts)[:, 0]
                cols = self.cols[b]
                self.margin += self.Xb[b] @ (w_new - self.w[cols])
                self.w[cols] = w_new
                loss_log.append([task["ts"], time.time(), self._loss()])
                finished.append(task)
            po.report_done(finished)
            done_count += len(finished)
            if not po.task_inbox:
                continue
            task = po.task_inbox.pop(0)
            if task is None:
                break
            max_view_stale = max(max_view_stale, len(inflight))
            b = task["iteration"] % bc.blocks
            pause = bc.task_sleep
            if self.straggles and bc.straggler_sleep and self.rng.random() < bc.straggler_prob:
                pause += bc.straggler_sleep
            if pause:
                time.sleep(pause)
            p = sigmoid(self.margin)
            g = self.Xb[b].T @ (p - self.y)
            h = self.Xb2[b].T @ (p * (1.0 - p) * self.row_nnz[b])
            push_ts = kv.push(self.keys[b], np.column_stack([g, h]), task=task["ts"])
            pull_ts = kv.pull(self.keys[b], task=task["ts"])
            inflight.append((task, b, push_ts, pull_ts))
            po.request_task()
            if time.monotonic() - last_report >= 0.5:
                po.report(self._counters(done_count, idle, begun))
                last_report = time.monotonic()
        run_seconds = time.monotonic() - begun
        po.report(self._counters(done_count, idle, begun))
        return {"worker": self.index, "t_start": t_start, "loss_log": loss_log,
                "idle_seconds": idle, "run_seconds": run_seconds,
                "max_view_staleness": max_view_stale,
                "counters": self._counters(done_count, idle, begun)}

    def _counters(self, done: int, idle: float, begun: float) -> dict[str, float]:
        return {"iterations": done, "workers": 1, "loss": self._loss(),
                "idle_seconds": idle, "run_seconds": time.monotonic() - begun}
