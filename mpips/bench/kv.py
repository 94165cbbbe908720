"""``bench kv``: push, pull and pushpull throughput next to raw MPI.

Every worker sends requests of K random sparse keys (vdim D, float32) to the
servers, which really store them (``add`` handle). For each size, after a
warm-up request that inserts the keys, the workers meet at a barrier and time
R requests of each op, one at a time (send, then wait for every server's
reply). Then, in the same run, they move the same bytes between the same
ranks with plain MPI Isend/Irecv (no framing, no storage) and time that too.
Throughput is summed over workers: total keys / slowest worker's time.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from ..apps.base import App
from ..config import Option, positive, section
from ..kv.handles import Add
from ..kv.table import Table
from ..kv.worker import KVWorker
from ..postoffice import WORKERS, Postoffice
from ..ring import hash_feature
from ..transport import Message, Op

section("bench", {
    "keys": Option(int, 1_000_000, "largest request size in keys (sizes go 1e3, 1e4, ...)",
                   positive),
    "min_keys": Option(int, 1000, "smallest request size in keys", positive),
    "vdim": Option(int, 1, "values per key", positive),
    "repeat": Option(int, 0, "requests timed per op and size; 0 picks about 2e7 keys' worth "
                     "(at least 3, at most 200)", lambda v: None if v >= 0 else "must be >= 0"),
    "json": Option(str, "", "append one JSON line per measurement to this file"),
})

OPS = ("push", "pull", "pushpull")
VALUE_BYTES = 4  # float32


def request_sizes(lo: int, hi: int) -> list[int]:
    sizes, k = [], lo
    while k < hi:
        sizes.append(k)
        k *= 10
    return sizes + [hi]


def wire_bytes(op: str, nkeys: int, vdim: int) -> tuple[int, int]:
    """Payload bytes worker->server and server->worker for one request."""
    vals = nkeys * vdim * VALUE_BYTES
    return {"push": (nkeys * 8 + vals, 0), "pull": (nkeys * 8, vals),
            "pushpull": (nkeys * 8 + vals, vals)}[op]


class KVBench(App):
    name = "bench-kv"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.b = cfg.bench

    def tables(self) -> list[Table]:
        return [Table("bench", vdim=self.b.vdim, dtype="float32", handle=Add())]

    def _repeat(self, nkeys: int) -> int:
        if self.b.repeat:
            return self.b.repeat
        return int(min(200, max(3, 2e7 // (nkeys * self.b.vdim))))

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        kv = KVWorker(po, "bench")
        w, nw = po.worker_index(), po.num_workers
        rows = []
        for nkeys in request_sizes(self.b.min_keys, self.b.keys):
            # Random sparse keys spread over the ring, disjoint between workers
            # and between sizes: the servers look them up among all the keys
            # stored so far, not in a run of their own.
            ids = np.arange(nkeys, dtype=np.uint64) * np.uint64(nw) + np.uint64(w)
            keys = np.sort(hash_feature(ids, salt=nkeys))
            vals = np.ones((nkeys, self.b.vdim), dtype=np.float32)
            out = np.empty_like(vals)
            kv.wait(kv.push(keys, vals))  # warm-up: the servers insert the keys
            reps = self._repeat(nkeys)
            for op in OPS:
                po.barrier(WORKERS)
                t = time.perf_counter()
                for _ in range(reps):
                    if op == "push":
                        kv.wait(kv.push(keys, vals))
                    elif op == "pull":
                        kv.wait(kv.pull(keys, out))
                    else:
                        kv.wait(kv.pushpull(keys, vals, out))
                kv_time = time.perf_counter() - t
                po.barrier(WORKERS)
                mpi_time = self._raw(po, keys, op, reps)
                rows.append({"op": op, "keys": nkeys, "reps": reps, "kv_time": kv_time,
                             "mpi_time": mpi_time})
        return {"rows": rows}

    def _raw(self, po: Postoffice, keys: np.ndarray, op: str, reps: int) -> float:
        """Time the same bytes to and from the same servers with plain MPI."""
        peers, out, inbox = [], [], []
        by_server = po.ring.slice_by_server(keys)
        for server in range(len(po.layout.servers)):
            # Every server gets a session, empty if no key falls on it, so that
            # servers can serve all workers at once.
            n = sum(b - a for _, a, b in by_server.get(server, []))
            up, down = wire_bytes(op, n, self.b.vdim)
            rank = po.server_rank(server)
            po.send(rank, Message(op=Op.RAW_BENCH, aux=reps, aux2=up,
                                  meta=str(down).encode()))
            peers.append(rank)
            out.append(np.ones(up, dtype=np.uint8))
            inbox.append(np.empty(down, dtype=np.uint8))
        t = time.perf_counter()
        for _ in range(reps):
            po.van.raw_exchange(peers, out, inbox)
        return time.perf_counter() - t

    def finish(self, po, workers, servers, elapsed) -> None:
        b = self.b
        nw, ns = len(workers), len(servers)
        lines = []
        header = (f"{'op':9s} {'keys':>9s} {'reps':>5s} {'keys/s':>11s} {'kv GB/s':>8s} "
                  f"{'MPI GB/s':>9s} {'kv/MPI':>7s}")
        print(f"bench kv: {ns} server(s), {nw} worker(s), vdim {b.vdim}, float32; "
              "one request in flight per worker; MPI = plain Isend/Irecv of the same bytes")
        print(header)
        for i, row in enumerate(workers[0]["rows"]):
            same = [w["rows"][i] for w in workers]
            kv_time = max(r["kv_time"] for r in same)
            mpi_time = max(r["mpi_time"] for r in same)
            up, down = wire_bytes(row["op"], row["keys"], b.vdim)
            moved = (up + down) * row["reps"] * nw
            total_keys = row["keys"] * row["reps"] * nw
            rec = {"op": row["op"], "keys": row["keys"], "vdim": b.vdim, "servers": ns,
                   "workers": nw, "reps": row["reps"],
                   "keys_per_s": total_keys / kv_time, "bytes_per_s": moved / kv_time,
                   "mpi_bytes_per_s": moved / mpi_time}
            rec["ratio"] = rec["bytes_per_s"] / rec["mpi_bytes_per_s"]
            lines.append(rec)
            print(f"{rec['op']:9s} {rec['keys']:9d} {rec['reps']:5d} "
                  f"{rec['keys_per_s']:11.4g} {rec['bytes_per_s'] / 1e9:8.3f} "
                  f"{rec['mpi_bytes_per_s'] / 1e9:9.3f} {rec['ratio']:7.1%}", flush=True)
        if b.json:
            with open(b.json, "a") as f:
                for rec in lines:
                    f.write(json.dumps(rec) + "\n")
