"""A test job run under mpiexec by tests/test_kv_mpi.py: ``python kv_job.py MODE [-o ...]``.

Modes:
  counts  W workers push +1 to random key sets many times (table "c", float32,
          vdim 1) and +1 rows to a vdim-3 float64 table; after a barrier every
          worker pulls all keys and checks them against the exact counts, which
          every worker can compute since the key sets come from seeded RNGs.
          Also: pushpull results lie between the worker's own count and the
          final count, empty key lists work, keys 0 and 2**64-1 work, unsorted
          and duplicate keys are rejected. Any mismatch raises: the job fails.
          With MPIPS_TEST_KILL="ROUND:RANK[+RANK...],..." worker 0 SIGKILLs those
          server ranks when it reaches those rounds (under mpiexec --with-ft ulfm);
          MPIPS_TEST_SIGNAL=STOP sends SIGSTOP instead (a frozen process: only
          its silence tells). MPIPS_TEST_BUSY=S: worker 1 computes for S seconds
          at round 5 without any MPI call (a busy rank is alive).
          MPIPS_TEST_TERM=1: after its kills, worker 0 sends SIGTERM to the
          scheduler, as Open MPI's launcher does after losing a host.
          MPIPS_TEST_KEYSET=1: every worker registers the key universe as a key
          set of each table and sends the rounds of odd index as subsets of it
          (positions), the others as keys: both paths meet on the same stores.
  chaos   the fault campaign's job (see ChaosJob).
  raise   worker 1 raises after a few requests; the job must end at once.
  flush   one worker pushes small random values task by task through the
          significant filter (threshold far above one push): after every push,
          the mass on the servers plus what the filter holds equals the mass
          pushed; after every task (flushed at the boundary) nothing is held
          and the servers have it all.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from mpips import config
from mpips.app import App, Table
from mpips.keys import KEY_MAX, mix64
from mpips.kv import Add
from mpips.kv.worker import KVWorker
from mpips.postoffice import WORKERS
from mpips.runtime import run

ROUNDS = 30
KEYS_PER_ROUND = 2000
UNIVERSE = 20000


def universe_keys() -> np.ndarray:
    universe = np.sort(mix64(np.arange(UNIVERSE, dtype=np.uint64)))
    universe[0], universe[-1] = 0, KEY_MAX  # the ends of the key space take part
    universe.sort()
    return universe


def key_sets(worker: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, worker])
    universe = universe_keys()
    return [np.sort(rng.choice(universe, KEYS_PER_ROUND, replace=False))
            for _ in range(ROUNDS)]


def expected_counts(nworkers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    allkeys = np.concatenate([k for w in range(nworkers) for k in key_sets(w, seed)])
    return np.unique(allkeys, return_counts=True)


def pid_of_rank(rank: int) -> int:
    """The pid of another rank of this job, found through /proc (Linux)."""
    mine = os.environ["PMIX_NAMESPACE"]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"PMIX_NAMESPACE") == mine.encode() and \
                env.get(b"OMPI_COMM_WORLD_RANK") == str(rank).encode():
            return int(entry)
    raise LookupError(f"no process for rank {rank}")


def kill_plan() -> dict[int, list[int]]:
    plan: dict[int, list[int]] = {}
    for item in filter(None, os.environ.get("MPIPS_TEST_KILL", "").split(",")):
        when, ranks = item.split(":")
        plan[int(when)] = [int(r) for r in ranks.split("+")]
    return plan


class CountsJob(App):
    name = "counts"

    def tables(self):
        return [Table("c", 1, "float32", Add()), Table("rows", 3, "float64", Add())]

    def _kill(self, ranks: list[int]) -> None:
        sig = getattr(signal, "SIG" + os.environ.get("MPIPS_TEST_SIGNAL", "KILL"))
        for rank in ranks:
            os.kill(pid_of_rank(rank), sig)
            print(f"killed rank {rank} at {time.time():.6f} ({sig.name})", flush=True)
        if os.environ.get("MPIPS_TEST_TERM"):
            os.kill(pid_of_rank(0), signal.SIGTERM)

    @staticmethod
    def _compute(seconds: float) -> int:
        """Pure Python work, no MPI call, for ``seconds``."""
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            n += sum(i * i for i in range(1000)) & 1
        return n

    def run_worker(self, po):
        seed = self.cfg.job.seed
        c, rows = KVWorker(po, "c"), KVWorker(po, "rows")
        mine = key_sets(po.worker_index(), seed)
        own: dict[int, int] = {}
        pending = []
        plan = kill_plan()
        universe = universe_keys()
        sets = None
        if os.environ.get("MPIPS_TEST_KEYSET"):
            sets = {kv: kv.register(universe) for kv in (c, rows)}

        def named(kv, i, keys):  # a round's keys as sent: a key list or a subset
            if sets is None or i % 2 == 0:
                return keys
            return sets[kv].subset(np.searchsorted(universe, keys))

        for i, keys in enumerate(mine):
            if plan:
                time.sleep(0.02)  # spread the run over the failure handling
                if po.worker_index() == 0 and i in plan:
                    self._kill(plan[i])
            if os.environ.get("MPIPS_TEST_BUSY") and po.worker_index() == 1 and i == 5:
                self._compute(float(os.environ["MPIPS_TEST_BUSY"]))
                print(f"worker 1 computed for {os.environ['MPIPS_TEST_BUSY']} s", flush=True)
            ones = np.ones((keys.size, 1), np.float32)
            if i % 3 == 2:
                got = c.wait(c.pushpull(named(c, i, keys), ones))[:, 0]
                own_now = np.array([own.get(int(k), 0) + 1 for k in keys[:50]])
                if (got[:50] < own_now).any():
                    raise AssertionError("pushpull returned less than this worker pushed")
            else:
                pending.append((c, c.push(named(c, i, keys), ones)))
            pending.append((rows, rows.push(named(rows, i, keys),
                                            np.tile([1.0, 2.0, -1.0], (keys.size, 1)))))
            for k in keys[:50].tolist():
                own[k] = own.get(k, 0) + 1
            if len(pending) > 4:
                for kv, ts in pending:
                    kv.wait(ts)
                pending = []
        for kv, ts in pending:
            kv.wait(ts)
        # Edge cases on the side of the data path.
        empty = np.empty(0, np.uint64)
        assert c.wait(c.pull(empty)).shape == (0, 1)
        c.wait(c.push(empty, np.empty((0, 1), np.float32)))
        for bad in (np.array([5, 3], np.uint64), np.array([3, 3], np.uint64)):
            try:
                c.push(bad, np.ones(2, np.float32))
            except ValueError:
                pass
            else:
                raise AssertionError(f"keys {bad} were not rejected")
        if sets is not None:  # a forgotten set is refused, not registered again
            gone = rows.register(universe[:10])
            rows.forget(gone)
            try:
                rows.pull(gone.subset(np.arange(3)))
            except ValueError as e:
                assert "forgotten" in str(e), e
            else:
                raise AssertionError("a forgotten key set was used")
        po.barrier(WORKERS)
        keys, counts = expected_counts(po.num_workers, seed)
        got = c.wait(c.pull(keys))[:, 0]
        if not np.array_equal(got, counts.astype(np.float32)):
            bad = np.flatnonzero(got != counts)
            ranges = np.unique(po.ring.slice(keys[bad])[1]).tolist()
            raise AssertionError(f"{bad.size} keys in ranges {ranges} have wrong counts, "
                                 f"e.g. key {keys[bad[0]]}: {got[bad[0]]} != {counts[bad[0]]}")
        got3 = rows.wait(rows.pull(keys))
        want3 = counts[:, None] * np.array([1.0, 2.0, -1.0])
        if not np.array_equal(got3, want3):
            raise AssertionError("vdim-3 float64 table has wrong rows")
        print(f"worker {po.worker_index()}: {keys.size} keys exact "
              f"(first {int(keys[0])}, last {int(keys[-1])}); "
              f"{po.van.bundles_sent} bundles sent", flush=True)
        return {"checked": int(keys.size)}

    def on_server_stop(self, po, server):
        sets = server.keysets
        print(f"server rank {po.rank}: {sets.requests} requests by key set position, "
              f"{sets.resolved_keys} keys resolved", flush=True)
        return {}


class ChaosJob(App):
    """The fault campaign's job (tests/chaos_campaign.py): each worker
    pushes +1 to random subsets of keys of its own (every other round as
    positions into a registered key set) and counts what was acknowledged;
    at the end every surviving worker pulls its keys and checks them exact.
    A worker's keys are its own, so the check holds whoever else died.
    MPIPS_CHAOS_ROUNDS rounds (default 60), 40 ms apart."""

    name = "chaos"
    KEYS, PER_ROUND = 4000, 500

    def tables(self):
        return [Table("c", 1, "float32", Add())]

    def run_worker(self, po):
        w = po.worker_index()
        rng = np.random.default_rng([self.cfg.job.seed, w])
        universe = np.sort(mix64(np.arange(self.KEYS, dtype=np.uint64) * np.uint64(64)
                                 + np.uint64(w)))  # disjoint between workers
        counts = np.zeros(self.KEYS, np.int64)
        c = KVWorker(po, "c")
        keyset = c.register(universe)
        ones = np.ones((self.PER_ROUND, 1), np.float32)
        for i in range(int(os.environ.get("MPIPS_CHAOS_ROUNDS", "60"))):
            pick = np.sort(rng.choice(self.KEYS, self.PER_ROUND, replace=False))
            keys = keyset.subset(pick) if i % 2 else universe[pick]
            c.wait(c.pushpull(keys, ones) if i % 3 == 2 else c.push(keys, ones))
            counts[pick] += 1
            if i == 0:
                print(f"worker {w}: round 0 done", flush=True)
            time.sleep(0.04)
        po.barrier(WORKERS)
        got = c.wait(c.pull(universe))[:, 0]
        bad = np.flatnonzero(got != counts)
        if bad.size:
            raise AssertionError(f"worker {w}: {bad.size} keys have wrong counts, e.g. "
                                 f"{got[bad[0]]} != {counts[bad[0]]}")
        print(f"worker {w}: {self.KEYS} keys exact", flush=True)
        return {}


class QueueJob(App):
    """Workers take partitions from the scheduler's queue (names only, no
    files) and push +1 to the key of each; every key must end at ``epochs``."""

    name = "queue"
    PARTITIONS = 23
    EPOCHS = 3

    def tables(self):
        return [Table("c", 1, "float32", Add())]

    def work_queue(self):
        from mpips.data import PartitionQueue
        self.queue = PartitionQueue([f"part-{i:05d}" for i in range(self.PARTITIONS)],
                                    epochs=self.EPOCHS, shuffle=True, seed=3)
        return self.queue

    def run_worker(self, po):
        c = KVWorker(po, "c")
        task, taken = po.next_task(), 0
        # MPIPS_TEST_KILL_WORKER="I:N": worker I dies (SIGKILL) holding its N+1-th task.
        victim, after = (int(v) for v in os.environ.get("MPIPS_TEST_KILL_WORKER", "-1:0")
                         .split(":"))
        die_after = int(os.environ.get("MPIPS_TEST_JOB_DIES_AFTER", "-1"))
        while task is not None:
            if po.worker_index() == 1 and taken == die_after:
                print("the whole job dies now", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)  # without ULFM: the job goes down
            if po.worker_index() == victim and taken == after:
                print(f"worker {victim} dies holding a task", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            c.wait(c.push(np.array([task["partition"]], np.uint64), np.ones(1, np.float32)))
            if po.worker_index() == 0:
                time.sleep(0.01)  # a slower worker takes fewer partitions
            time.sleep(float(os.environ.get("MPIPS_TEST_TASK_SLEEP", "0")))
            taken += 1
            task = po.next_task(done=task)
            if os.environ.get("MPIPS_TEST_ANNOUNCE"):
                print(f"worker {po.worker_index()}: task {taken} done", flush=True)
        po.barrier(WORKERS)
        got = c.wait(c.pull(np.arange(self.PARTITIONS, dtype=np.uint64)))[:, 0]
        if not np.all(got == self.EPOCHS):
            raise AssertionError(f"partition counts {got.tolist()}")
        print(f"worker {po.worker_index()} took {taken} partitions", flush=True)
        return {"taken": taken}

    def finish(self, po, workers, servers, elapsed):
        if po.cfg.checkpoint.resume:
            # the resumed run completes what the first left; counts are still exact
            print(f"queue: {self.queue.tasks_done} tasks done after resume", flush=True)
            return
        self.queue.check_exactly_once()
        print("queue: every partition exactly once per epoch", flush=True)


class DetermJob(QueueJob):
    """One worker trains AdaGrad weights task by task (gradients depend on the
    pulled weights, so order matters) and writes the final weights: a run
    interrupted and resumed from a checkpoint must end with the same bits."""

    name = "determ"

    def tables(self):
        from mpips.kv import AdaGrad
        return [Table("w", 4, "float32", AdaGrad(lr=0.3))]

    def run_worker(self, po):
        w = KVWorker(po, "w")
        die_after = int(os.environ.get("MPIPS_TEST_JOB_DIES_AFTER", "-1"))
        task, taken = po.next_task(), 0
        while task is not None:
            if taken == die_after:
                os.kill(os.getpid(), signal.SIGKILL)
            rng = np.random.default_rng([task["partition"], task["epoch"]])
            keys = np.unique(rng.integers(0, 200, 50).astype(np.uint64))
            cur = w.wait(w.pull(keys))
            grad = np.tanh(cur - rng.normal(size=cur.shape)).astype(np.float32)
            w.push(keys, grad)
            taken += 1
            time.sleep(float(os.environ.get("MPIPS_TEST_TASK_SLEEP", "0")))
            task = po.next_task(done=task)
        final = w.wait(w.pull(np.arange(200, dtype=np.uint64)))
        os.makedirs(self.cfg.job.output, exist_ok=True)
        np.save(os.path.join(self.cfg.job.output, "final.npy"), final)
        return {}

    def finish(self, po, workers, servers, elapsed):
        pass

    def on_server_start(self, po, server):
        # MPIPS_TEST_SLOW_CHECKPOINT=S: checkpoint files take S s more to write
        slow = float(os.environ.get("MPIPS_TEST_SLOW_CHECKPOINT", "0"))
        if slow:
            from mpips import checkpoint
            write = checkpoint.write_shard

            def slow_write(*args, **kwargs):
                time.sleep(slow)
                return write(*args, **kwargs)
            checkpoint.write_shard = slow_write


class FlushJob(QueueJob):
    name = "flush"
    PARTITIONS = 6
    EPOCHS = 2

    def tables(self):
        return [Table("c", 2, "float64", Add())]

    def run_worker(self, po):
        c = KVWorker(po, "c")
        universe = np.arange(400, dtype=np.uint64)
        rng = np.random.default_rng(5)
        pushed = np.zeros(2)
        task, tasks, held_mid = po.next_task(), 0, 0.0
        while task is not None:
            for _ in range(5):
                keys = np.sort(rng.choice(universe, 100, replace=False))
                vals = rng.uniform(0.0, 0.01, size=(keys.size, 2))
                pushed += vals.sum(axis=0)
                c.wait(c.push(keys, vals))
                held = c.filters.held_sum()
                on_servers = c.wait(c.pull(universe)).sum(axis=0)
                if not np.allclose(on_servers + held, pushed, rtol=1e-12, atol=1e-9):
                    raise AssertionError(f"mass {on_servers} on servers + {held} held != "
                                         f"{pushed} pushed")
                held_mid = max(held_mid, float(held.sum()))
            tasks += 1
            task = po.next_task(done=task)  # the boundary: what was held is pushed
            if c.filters.held_sum().any():
                raise AssertionError(f"{c.filters.held_sum()} still held after a task")
            on_servers = c.wait(c.pull(universe)).sum(axis=0)
            if not np.allclose(on_servers, pushed, rtol=1e-12, atol=1e-9):
                raise AssertionError(f"after a task: {on_servers} on servers != {pushed}")
        if held_mid <= 0:
            raise AssertionError("the filter never held anything back: the test tests nothing")
        print(f"flush: {tasks} tasks, up to {held_mid:.3f} held within a task, "
              "none after each", flush=True)
        return {}

    def finish(self, po, workers, servers, elapsed):
        pass


class RaiseJob(App):
    name = "raise"

    def tables(self):
        return [Table("c", 1, "float32", Add())]

    def on_server_start(self, po, server):
        if os.environ.get("MPIPS_TEST_SERVER_DIES") and server.server == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    def run_worker(self, po):
        if os.environ.get("MPIPS_TEST_HANG") and po.worker_index() == 0:
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen, not dead: only silence tells
        c = KVWorker(po, "c")
        keys = np.sort(mix64(np.arange(1000, dtype=np.uint64)))
        for i in range(10**6):
            c.wait(c.push(keys, np.ones(keys.size, np.float32)))
            if po.worker_index() == 1 and i == 20 and not os.environ.get("MPIPS_TEST_HANG"):
                raise RuntimeError("injected failure in the test job")
            time.sleep(0.001)
        return {}


if __name__ == "__main__":
    mode, overrides = sys.argv[1], [a for a in sys.argv[2:] if a != "-o"]
    cfg = config.load(None, overrides)
    run(cfg, {"counts": CountsJob, "chaos": ChaosJob, "raise": RaiseJob, "queue": QueueJob,
              "determ": DetermJob, "flush": FlushJob}[mode](cfg))
