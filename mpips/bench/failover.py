"""``bench failover``: kill a server mid-run and time the recovery.

Run it under ``mpiexec --with-ft ulfm`` with 3+ servers and replication >= 1.
Workers push +1 counters to random key sets in a steady stream of requests;
after ``kill_after`` requests worker 0 SIGKILLs the server that owns the
busiest range (server 1 by default). The scheduler logs when it learnt of the
death (detection), the new owner logs when it served its first request
(failover), and the scheduler logs when every range had its replicas again
(repair). At the end every worker checks that each counter equals the exact
number of pushes: nothing acknowledged was lost, nothing counted twice.
Times are measured from the kill, on one clock (all ranks share this host).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np

from ..app import App, Table
from ..config import Option, non_negative, positive, section
from ..handles import Add
from ..keys import hash_feature
from ..kv.worker import KVWorker
from ..postoffice import WORKERS, Postoffice
from . import append_jsonl

section("failover", {
    "requests": Option(int, 400, "push requests per worker", positive),
    "keys": Option(int, 20000, "keys per request", positive),
    "universe": Option(int, 200000, "distinct keys the requests draw from", positive),
    "kill_after": Option(int, 100, "requests before worker 0 kills the server", positive),
    "victim": Option(int, 1, "index of the server to kill", non_negative),
    "json": Option(str, "", "append the measured times as one JSON line to this file"),
})


def _key_sets(worker: int, seed: int, f) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, worker, 7])
    universe = np.sort(hash_feature(np.arange(f.universe)))
    return [universe[np.sort(rng.choice(f.universe, f.keys, replace=False))]
            for _ in range(f.requests)]


class FailoverBench(App):
    name = "bench-failover"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.f = cfg.failover

    def tables(self) -> list[Table]:
        return [Table("c", 1, "float32", Add())]

    def on_server_start(self, po: Postoffice, server) -> None:
        pids = os.path.join(self.cfg.job.output, "pids")
        os.makedirs(pids, exist_ok=True)
        with open(os.path.join(pids, str(po.rank)), "w") as out:
            out.write(str(os.getpid()))

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        f = self.f
        if not po.van.fault_tolerant or po.ring.replication < 1:
            raise RuntimeError("bench failover needs mpiexec --with-ft ulfm and "
                               "[layout] replication >= 1 (with 3+ servers)")
        kv = KVWorker(po, "c")
        mine = _key_sets(po.worker_index(), self.cfg.job.seed, f)
        killed_at = None
        t0 = time.perf_counter()
        window: list[int] = []
        for i, keys in enumerate(mine):
            if po.worker_index() == 0 and i == f.kill_after:
                victim = po.server_rank(f.victim)
                with open(os.path.join(self.cfg.job.output, "pids", str(victim))) as pid:
                    os.kill(int(pid.read()), signal.SIGKILL)
                killed_at = time.time()
            window.append(kv.push(keys, np.ones(keys.size, np.float32)))
            if len(window) >= 4:
                kv.wait(window.pop(0))
        kv.wait_all()
        elapsed = time.perf_counter() - t0
        po.barrier(WORKERS)
        universe = np.sort(hash_feature(np.arange(f.universe)))
        want = np.zeros(f.universe)
        for w in range(po.num_workers):
            for keys in _key_sets(w, self.cfg.job.seed, f):
                want[np.searchsorted(universe, keys)] += 1
        got = kv.wait(kv.pull(universe))[:, 0]
        wrong = int((got != want).sum())
        if wrong:
            raise AssertionError(f"{wrong} counters differ from the exact push counts")
        return {"killed_at": killed_at, "pushes": f.requests * f.keys, "elapsed": elapsed}

    def finish(self, po, workers, servers, elapsed) -> None:
        killed = [w["killed_at"] for w in workers if w.get("killed_at")]
        events = po.events
        if not killed:
            print("bench failover: no server was killed (kill_after >= requests?)")
            return
        t = killed[0]

        def first(name: str) -> float | None:
            times = [e["time"] for e in events if e["event"] == name]
            return min(times) - t if times else None

        rec = {"detection_s": first("detected"), "failover_s": first("first_served"),
               "repair_s": first("repaired"), "servers": len(po.layout.servers),
               "workers": len(workers), "replication": po.ring.replication,
               "keys_per_request": self.f.keys,
               "pushes_per_s": sum(w["pushes"] for w in workers)
               / max(w["elapsed"] for w in workers)}
        print("bench failover: a server SIGKILLed mid-run; times from the kill: "
              + ", ".join(f"{k[:-2]} {rec[k] * 1000:.1f} ms"
                          for k in ("detection_s", "failover_s", "repair_s")
                          if rec[k] is not None)
              + f"; counters exact; {rec['pushes_per_s']:.3g} pushed keys/s", flush=True)
        if self.f.json:
            append_jsonl(self.f.json, [rec])
