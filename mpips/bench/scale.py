"""``bench scale``: fill the servers with as many parameters as asked, then
sweep them.

Each worker owns an equal slice of the key space and pushes
``params / workers`` keys, evenly spread over its slice, in sorted batches
(vdim 1 float32, ``add``), so the servers store ``params`` parameters in all.
Then every worker pulls all its keys back in batches (the sweep) and checks
the values. The scheduler prints the fill and sweep times, keys/s, the
servers' bytes per parameter and their peak memory (RSS).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np

from ..app import App, Table
from ..config import Option, positive, section
from ..handles import Add
from ..kv.worker import KVWorker
from ..postoffice import WORKERS, Postoffice

section("scale", {
    "params": Option(float, 1e8, "parameters to store across all servers", positive),
    "batch": Option(int, 10_000_000, "keys per request", positive),
})


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class ScaleBench(App):
    name = "bench-scale"

    def tables(self) -> list[Table]:
        return [Table("w", 1, "float32", Add())]

    def _keys(self, w: int, nw: int, a: int, b: int, per_worker: int) -> np.ndarray:
        """Keys a..b of worker w: evenly spread over its 1/nw of the key space."""
        span = (1 << 64) // nw
        step = span // per_worker
        start = np.uint64(w * span)
        return start + np.arange(a, b, dtype=np.uint64) * np.uint64(step)

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        s = self.cfg.scale
        kv = KVWorker(po, "w")
        w, nw = po.worker_index(), po.num_workers
        per_worker = int(s.params) // nw
        po.barrier(WORKERS)
        t = time.perf_counter()
        for a in range(0, per_worker, s.batch):
            keys = self._keys(w, nw, a, min(per_worker, a + s.batch), per_worker)
            kv.wait(kv.push(keys, np.ones(keys.size, np.float32)))
        fill = time.perf_counter() - t
        po.barrier(WORKERS)
        t = time.perf_counter()
        bad = 0
        for a in range(0, per_worker, s.batch):
            keys = self._keys(w, nw, a, min(per_worker, a + s.batch), per_worker)
            bad += int((kv.wait(kv.pull(keys))[:, 0] != 1.0).sum())
        sweep = time.perf_counter() - t
        if bad:
            raise AssertionError(f"{bad} values read back wrong")
        return {"keys": per_worker, "fill": fill, "sweep": sweep}

    def on_server_stop(self, po: Postoffice, server) -> dict[str, Any]:
        return {"rss_gib": _peak_rss_gib()}

    def finish(self, po, workers, servers, elapsed) -> None:
        keys = sum(w["keys"] for w in workers)
        fill = max(w["fill"] for w in workers)
        sweep = max(w["sweep"] for w in workers)
        stored = sum(s["keys"] for s in servers)
        nbytes = sum(s["bytes"] for s in servers)
        print(f"bench scale: {stored:.4g} float32 parameters on {len(servers)} servers "
              f"({nbytes / max(stored, 1):.1f} bytes each, peak RSS per server "
              + ", ".join(f"{s['rss_gib']:.1f}" for s in servers) + " GiB); "
              f"fill {fill:.1f} s ({keys / fill:.3g} keys/s), sweep {sweep:.1f} s "
              f"({keys / sweep:.3g} keys/s), values checked", flush=True)
