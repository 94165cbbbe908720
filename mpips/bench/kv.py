"""``bench kv``: push, pull and pushpull throughput next to raw MPI.

Every worker sends requests of K random sparse keys (vdim D, float32) to the
servers, which really store them (``add`` handle), among ``background_keys``
random keys stored first: no request is a contiguous run of a store (served
with views, without a lookup). For each size, after a warm-up push that
inserts the keys, the workers time R requests of each op, one at a time (send,
then wait for every server's reply), of each kind of key list: first a
new list per request (``fresh``: random stored keys, as each minibatch of
a real job sends), by key and, registered as a key set, by position
(``keyset``); then one list repeated (as when minibatches come back epoch
after epoch: the store's slot cache skips its lookup; one untimed pull of
it in each round puts it back there). The kinds are timed
in ROUNDS interleaved rounds, a slice of each in turn between barriers of
the workers, so that a slow moment of the machine falls on all of them
alike. Then, in the same run, they move the same bytes between the same
ranks with plain MPI Isend/Irecv (no framing, no storage; one untimed
exchange first) and time that too.
Throughput is summed over workers: total keys / slowest worker's time.
With ``window`` W > 1 each worker keeps W requests in flight.

For sizes up to ``naive_max_keys`` the same requests also go through a
hand-written parameter server (pickled messages, a Python dict per server,
a loop per key: :mod:`mpips.transport.baselines`), and the speedup is printed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..app import App, Table
from ..config import Option, positive, section
from ..handles import Add
from ..keys import hash_feature
from ..kv.worker import KVWorker
from ..postoffice import WORKERS, Command, Postoffice
from . import append_jsonl

RAW, NAIVE = "bench.raw", "bench.naive"  # commands to the servers: serve a baseline

section("bench", {
    "keys": Option(int, 1_000_000, "largest request size in keys (sizes go 1e3, 1e4, ...)",
                   positive),
    "min_keys": Option(int, 1000, "smallest request size in keys", positive),
    "vdim": Option(int, 1, "values per key", positive),
    "repeat": Option(int, 0, "requests timed per op and size; 0 picks about 2e7 keys' worth "
                     "(at least 5, at most 200)", lambda v: None if v >= 0 else "must be >= 0"),
    "json": Option(str, "", "append one JSON line per measurement to this file"),
    "window": Option(int, 1, "requests a worker keeps in flight", positive),
    "keys_kind": Option(str, "random", "random (hashed, sparse) or dense (consecutive) keys",
                        choices=("random", "dense")),
    "naive_max_keys": Option(int, 100_000, "largest request size also run through the "
                             "hand-written pickled-dict server (0: never)",
                             lambda v: None if v >= 0 else "must be >= 0"),
    "fresh": Option(bool, True, "also time pull and pushpull with a new key list per "
                    "request (random stored keys, as each minibatch of a real job sends), "
                    "shown first; the other rows repeat one list, which the store's slot "
                    "cache serves without a lookup"),
    "keysets": Option(bool, True, "with fresh: time the same new lists again as positions "
                      "into a registered key set (the pool they are drawn from), as a "
                      "worker sends a partition's minibatches (rows 'keyset')"),
    "background_keys": Option(int, 1_000_000, "random keys stored first (in all), so that "
                              "no request is a contiguous run of the store (which the store "
                              "serves with views, no lookup)",
                              lambda v: None if v >= 0 else "must be >= 0"),
})

OPS = ("push", "pull", "pushpull")
# Rounds the rows of one size are timed in, interleaved.
ROUNDS = 5
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
        return int(min(200, max(5, 2e7 // (nkeys * self.b.vdim))))

    def on_server_start(self, po: Postoffice, server) -> None:
        from ..kv.index import load_compiled_search
        from ..transport import baselines  # MPI: not when [bench] is declared
        # The steady state of a long job: a server loads the compiled search
        # once it has searched enough keys (mpips/kv/index.py); here before
        # the start barrier, so that no timed request waits for the compiler.
        load_compiled_search()
        store: dict[int, object] = {}  # the naive server's dict, kept across sizes
        naive_asked: list[Command] = []
        raw_asked: list[Command] = []

        def naive(c: Command) -> None:
            naive_asked.append(c)
            if len(naive_asked) == po.num_workers:
                baselines.naive_serve(po.van, sum(m.args["requests"] for m in naive_asked),
                                      store)
                naive_asked.clear()

        def raw(c: Command) -> None:
            # once every worker asked, serve them all at once
            raw_asked.append(c)
            if len(raw_asked) == po.num_workers:
                sessions = list(raw_asked)
                raw_asked.clear()
                baselines.raw_serve(po.van, [m.sender for m in sessions],
                                    [m.args["up"] for m in sessions],
                                    [m.args["down"] for m in sessions],
                                    sessions[0].args["reps"])

        po.on_command(NAIVE, naive)
        po.on_command(RAW, raw)

    def _keys(self, nkeys: int, w: int, nw: int) -> np.ndarray:
        ids = np.arange(nkeys, dtype=np.uint64) * np.uint64(nw) + np.uint64(w)
        if self.b.keys_kind == "dense":
            # Consecutive ids, one block per size: dense runs on each server.
            return ids + np.uint64(nkeys * nw)
        # Random sparse keys spread over the ring, disjoint between workers
        # and between sizes: the servers look them up among all the keys
        # stored so far, not in a run of their own.
        return np.sort(hash_feature(ids, salt=nkeys))

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        kv = KVWorker(po, "bench")
        w, nw = po.worker_index(), po.num_workers
        rows = []
        window = self.b.window
        # this worker's share of the keys stored first (fresh lists draw from them too)
        share = self.b.background_keys // nw
        ids = np.arange(share, dtype=np.uint64) * np.uint64(nw) + np.uint64(w)
        background = np.sort(hash_feature(ids, salt=1 << 40))
        if background.size:
            kv.wait(kv.push(background, np.zeros((share, self.b.vdim), np.float32)))
        for nkeys in request_sizes(self.b.min_keys, self.b.keys):
            keys = self._keys(nkeys, w, nw)
            vals = np.ones((nkeys, self.b.vdim), dtype=np.float32)
            outs = [np.empty_like(vals) for _ in range(window)]
            kv.wait(kv.push(keys, vals))  # warm-up: the servers insert the keys,
            kv.wait(kv.pull(keys, outs[0]))  # then remember where they are
            reps = max(self._repeat(nkeys), window)
            variants = self._fresh(po, kv, keys, background, reps, outs) if self.b.fresh \
                else []
            variants += [(op, "repeated", [keys] * reps) for op in OPS]
            spent = self._interleaved(po, kv, variants, vals, outs)
            for (op, lists, requests), kv_time in zip(variants, spent, strict=True):
                row = {"op": op, "keys": nkeys, "reps": len(requests), "kv_time": kv_time,
                       "mpi_time": self._raw(po, keys, op, len(requests)), "lists": lists}
                if lists == "repeated" and nkeys <= self.b.naive_max_keys:
                    po.barrier(WORKERS)
                    row["naive_reps"] = nreps = max(1, min(reps, int(2e6 // nkeys)))
                    row["naive_time"] = self._naive(po, keys, vals, op, nreps)
                rows.append(row)
            for _, lists, requests in variants:
                if lists == "keyset":
                    kv.forget(requests[0].keyset)
                    break
        return {"rows": rows}

    def _interleaved(self, po: Postoffice, kv: KVWorker,
                     variants: list[tuple[str, str, list]], vals: np.ndarray,
                     outs: list[np.ndarray]) -> list[float]:
        """Seconds of each variant's requests, timed in ROUNDS rounds that take
        a slice of every variant in turn (A B C A B C ...): a slow moment of
        the machine falls on all of them alike, not on one row."""
        rounds = max(1, min(ROUNDS, min(len(r) for _, _, r in variants) // self.b.window))
        spent = [0.0] * len(variants)
        for i in range(rounds):
            last = None
            for j, (op, lists, requests) in enumerate(variants):
                if lists == "repeated" and last != "repeated":
                    # untimed: the fresh lists by key since took the repeated
                    # list's place in the store's slot cache (it keeps a
                    # requester's last two lists)
                    kv.wait(kv.pull(requests[0], outs[0]))
                last = lists
                a, b = len(requests) * i // rounds, len(requests) * (i + 1) // rounds
                spent[j] += self._timed(po, kv, op, requests[a:b], vals, outs)
        return spent

    def _timed(self, po: Postoffice, kv: KVWorker, op: str, lists: list[np.ndarray],
               vals: np.ndarray, outs: list[np.ndarray]) -> float:
        """Seconds for one request of ``op`` per key list, ``window`` in flight,
        between two barriers of the workers."""
        window = self.b.window
        po.barrier(WORKERS)
        t = time.perf_counter()
        inflight: list[int] = []
        for i, keys in enumerate(lists):
            if len(inflight) == window:
                kv.wait(inflight.pop(0))
            out = outs[i % window]
            if op == "push":
                inflight.append(kv.push(keys, vals))
            elif op == "pull":
                inflight.append(kv.pull(keys, out))
            else:
                inflight.append(kv.pushpull(keys, vals, out))
        kv.wait_all()
        spent = time.perf_counter() - t
        po.barrier(WORKERS)
        return spent

    def _fresh(self, po: Postoffice, kv: KVWorker, keys: np.ndarray, background: np.ndarray,
               reps: int, outs: list[np.ndarray]) -> list[tuple[str, str, list]]:
        """pull and pushpull requests, each a new sorted list of ``keys.size``
        keys drawn from what this worker stored (this size's keys and its share
        of the background keys): every request makes the servers search. With
        ``keysets``, more such lists as positions into the pool, registered
        once as a key set (as a worker registers its partition's keys): no
        search. Every variant draws its own lists, so that no list comes back
        to a store's slot cache or to the CPU's caches when the variants
        are interleaved. Each is sent once untimed first, as the repeated
        list's warm-up."""
        nkeys, window = keys.size, self.b.window
        pool = np.concatenate([keys, background])
        rng = np.random.default_rng([nkeys, po.worker_index()])
        variants = ("pull", "pushpull") * (2 if self.b.keysets else 1)
        # memory: 3e7 keys in all, or window + 1 lists per variant where more
        lists = max(window + 1, min(reps, int(3e7 // (len(variants) * nkeys))))
        pool.sort()
        picks = [[np.sort(rng.choice(pool.size, nkeys, replace=False)) for _ in range(lists)]
                 for _ in variants]
        vals = np.ones((nkeys, self.b.vdim), dtype=np.float32)
        out: list[tuple[str, str, list]] = []
        for op, p in zip(variants[:2], picks[:2], strict=True):
            fresh = [pool[x] for x in p]
            # the servers build their stores' search index once enough keys
            # were searched (a real job's steady state; numba's kernel, where
            # installed, was loaded at start)
            self._timed(po, kv, "pull", fresh, vals, outs)
            out.append((op, "fresh", fresh))
        if self.b.keysets:
            pool_set = kv.register(pool)
            for op, p in zip(variants[2:], picks[2:], strict=True):
                subsets = [pool_set.subset(x) for x in p]
                self._timed(po, kv, "pull", subsets, vals, outs)  # as the lists by key
                out.append((op, "keyset", subsets))
        return out

    def _naive(self, po: Postoffice, keys: np.ndarray, vals: np.ndarray, op: str,
               reps: int) -> float:
        """The same requests through the hand-written pickled-dict server."""
        from ..transport import baselines  # MPI: not when [bench] is declared
        by_server = po.ring.slice_by_server(keys)
        parts = []
        for server, segs in sorted(by_server.items()):
            a, b = segs[0][1], segs[-1][2]
            parts.append((po.server_rank(server), keys[a:b],
                          None if op == "pull" else vals[a:b]))
        for server in range(len(po.layout.servers)):
            po.tell(po.server_rank(server), Command(NAIVE, {
                "requests": reps * sum(p[0] == po.server_rank(server) for p in parts)}))
        t = time.perf_counter()
        for _ in range(reps):
            baselines.naive_request(po.van, op, parts)
        return time.perf_counter() - t

    def _raw(self, po: Postoffice, keys: np.ndarray, op: str, reps: int) -> float:
        """Time the same bytes to and from the same servers with plain MPI."""
        from ..transport import baselines  # MPI: not when [bench] is declared
        peers, out, inbox = [], [], []
        by_server = po.ring.slice_by_server(keys)
        for server in range(len(po.layout.servers)):
            # Every server gets a session, empty if no key falls on it, so that
            # servers can serve all workers at once.
            n = sum(b - a for _, a, b in by_server.get(server, []))
            up, down = wire_bytes(op, n, self.b.vdim)
            rank = po.server_rank(server)
            po.tell(rank, Command(RAW, {"reps": reps + 1, "up": up, "down": down}))
            peers.append(rank)
            out.append(np.ones(up, dtype=np.uint8))
            inbox.append(np.empty(down, dtype=np.uint8))
        baselines.raw_exchange(po.van, peers, out, inbox)  # warm-up: pages touched
        t = time.perf_counter()
        for _ in range(reps):
            baselines.raw_exchange(po.van, peers, out, inbox)
        return time.perf_counter() - t

    def on_server_stop(self, po: Postoffice, server) -> dict[str, Any]:
        from ..kv.index import search_kernel_line
        return {"search": search_kernel_line()}  # what this server searched with

    def finish(self, po, workers, servers, elapsed) -> None:
        b = self.b
        nw, ns = len(workers), len(servers)
        lines = []
        header = (f"{'op':9s} {'lists':8s} {'keys':>9s} {'reps':>5s} {'keys/s':>11s} "
                  f"{'kv GB/s':>8s} "
                  f"{'MPI GB/s':>9s} {'kv/MPI':>7s} {'naive keys/s':>12s} {'x naive':>8s}")
        filters = sorted(set(self.cfg.filters.push) | set(self.cfg.filters.pull))
        kv = self.cfg.kv
        print(f"bench kv: {ns} server(s), {nw} worker(s), vdim {b.vdim}, float32, "
              f"{b.keys_kind} keys among {b.background_keys} stored first, "
              f"filters {filters or 'none'}; "
              f"{b.window} request(s) in flight per worker; the kinds of list of a size "
              f"timed in up to {ROUNDS} interleaved rounds; chunks of "
              f"{kv.chunk_keys or 'unlimited'} keys; batching "
              f"{f'below {kv.coalesce_bytes} bytes' if kv.coalesce_bytes else 'off'}; MPI = "
              "plain Isend/Irecv of the same bytes; naive = pickled messages and a dict "
              "per server, same ranks; new lists searched by "
              f"{servers[0].get('search', '?') if servers else '?'}")
        print(header)
        for i, row in enumerate(workers[0]["rows"]):
            same = [w["rows"][i] for w in workers]
            kv_time = max(r["kv_time"] for r in same)
            mpi_time = max(r["mpi_time"] for r in same)
            up, down = wire_bytes(row["op"], row["keys"], b.vdim)
            moved = (up + down) * row["reps"] * nw
            total_keys = row["keys"] * row["reps"] * nw
            rec = {"op": row["op"], "lists": row["lists"], "keys": row["keys"],
                   "vdim": b.vdim, "servers": ns,
                   "workers": nw, "reps": row["reps"],
                   "keys_per_s": total_keys / kv_time, "bytes_per_s": moved / kv_time,
                   "mpi_bytes_per_s": moved / mpi_time}
            rec["ratio"] = rec["bytes_per_s"] / rec["mpi_bytes_per_s"]
            rec.update(window=b.window, keys_kind=b.keys_kind, chunk_keys=kv.chunk_keys,
                       background_keys=b.background_keys,
                       coalesce_bytes=kv.coalesce_bytes,
                       filters=sorted(set(self.cfg.filters.push) | set(self.cfg.filters.pull)))
            naive = ""
            if "naive_time" in row:
                naive_time = max(r["naive_time"] for r in same)
                rec["naive_keys_per_s"] = row["keys"] * row["naive_reps"] * nw / naive_time
                rec["speedup_vs_naive"] = rec["keys_per_s"] / rec["naive_keys_per_s"]
                naive = f" {rec['naive_keys_per_s']:12.4g} {rec['speedup_vs_naive']:8.1f}"
            lines.append(rec)
            print(f"{rec['op']:9s} {rec['lists']:8s} {rec['keys']:9d} {rec['reps']:5d} "
                  f"{rec['keys_per_s']:11.4g} {rec['bytes_per_s'] / 1e9:8.3f} "
                  f"{rec['mpi_bytes_per_s'] / 1e9:9.3f} {rec['ratio']:7.1%}{naive}",
                  flush=True)
        rate = {(r["op"], r["lists"], r["keys"]): r["keys_per_s"] for r in lines}
        for kind, what in (("fresh", "fresh lists"), ("keyset", "fresh lists by key set")):
            pairs = [(op, k) for op, lists, k in rate if lists == kind
                     and (op, "repeated", k) in rate]
            if pairs:
                print(f"{what} / repeated list: " + ", ".join(
                    f"{op} {k:.0e} {rate[(op, kind, k)] / rate[(op, 'repeated', k)]:.0%}"
                    for op, k in pairs), flush=True)
        if b.json:
            append_jsonl(b.json, lines)
