"""``bench store``: one server's storage alone, in one process (no MPI).

For each size N it fills a SortedStore with N new random (hashed) keys in
batches, then times lookups of random stored keys (pull), updates (push,
the table's handle applied in place), repeated key lists (push again: the
slot cache) and small requests of new keys into the filled store (the
delta), and reports bytes per parameter with and without an AdaGrad
accumulator, counted and as the growth of the process's resident memory.
Key generation (hash and sort) is done before the clock starts.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ..handles import AdaGrad, Add
from ..keys import hash_feature
from ..kv.index import search_kernel_line
from ..kv.store import SortedStore
from . import append_jsonl


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rss_bytes() -> int:
    """This process's resident memory (Linux), or 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def bench_size(n: int, batch: int, handle, seed: int = 0, small: int = 10_000,
               small_rounds: int = 50) -> dict:
    batches = [np.sort(hash_feature(np.arange(a, min(n, a + batch))))
               for a in range(0, n, batch)]
    ones = np.ones(batch, np.float32)
    rss_before = rss_bytes()
    store = SortedStore(1, "float32", handle)
    insert = sum(_timed(lambda k=k: store.push(k, ones[: k.size])) for k in batches)
    rss_filled = rss_bytes() - rss_before
    rng = np.random.default_rng(seed)
    # a quarter of the keys at most: never the whole store, which would be one run
    probe = np.sort(rng.choice(store.keys, min(batch, n // 4), replace=False))
    vals = np.ones(probe.size, np.float32)
    pull = _timed(lambda: store.pull(probe))
    push = _timed(lambda: store.push(probe, vals, sender=1))   # searches, caches slots
    again = _timed(lambda: store.push(probe, vals, sender=1))  # slot cache hit
    # small requests of new keys into the filled store (the delta's case)
    fresh = [np.sort(hash_feature(np.arange(n + i * small, n + (i + 1) * small)))
             for i in range(small_rounds)]
    ones_small = np.ones(small, np.float32)
    small_time = sum(_timed(lambda k=k: store.push(k, ones_small)) for k in fresh)
    return {"keys": n, "batch": batch, "handle": type(handle).__name__,
            "inserts_per_s": n / insert, "lookups_per_s": probe.size / pull,
            "updates_per_s": probe.size / push, "cached_updates_per_s": probe.size / again,
            "small_batch": small, "small_inserts_per_s": small * small_rounds / small_time,
            "compactions": store.compactions,
            "bytes_per_param": store.bytes_per_key(),
            "rss_bytes_per_param": rss_filled / n if rss_before else None,
            "reserved_bytes_per_param": store.reserved_bytes / n}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1e6,1e7", help="comma-separated key counts "
                   "(1e8 needs about 2 GB)")
    p.add_argument("--batch", type=float, default=1e6, help="keys per insert request")
    p.add_argument("--small", type=float, default=1e4, help="keys per small insert request "
                   "(new keys into the filled store)")
    p.add_argument("--json", help="append JSON lines to this file")


def run(args: argparse.Namespace) -> int:
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print("bench store: SortedStore, vdim 1 float32, random hashed keys; inserts are new "
          f"keys in sorted batches of {int(args.batch)}; lookups and updates of "
          f"{int(args.batch)} random stored keys"
          f"; new lists searched by {search_kernel_line()}")
    print("B/param: bytes of the stored rows per parameter (key included); RSS: the "
          "growth of this process's resident memory while filling, per parameter; "
          "reserved: address space of the buffers (spare rows are never touched)")
    print(f"small inserts: {int(args.small)} new keys a request into the filled store")
    print(f"{'keys':>11s} {'handle':>8s} {'inserts/s':>11s} {'small ins/s':>11s} "
          f"{'lookups/s':>11s} {'updates/s':>11s} {'cached upd/s':>12s} {'B/param':>8s} "
          f"{'RSS B/p':>8s} {'reserved':>8s}")
    for n in sizes:
        for handle in (Add(), AdaGrad()):
            rec = bench_size(n, int(args.batch), handle, small=int(args.small))
            print(f"{n:11d} {rec['handle']:>8s} {rec['inserts_per_s']:11.4g} "
                  f"{rec['small_inserts_per_s']:11.4g} {rec['lookups_per_s']:11.4g} "
                  f"{rec['updates_per_s']:11.4g} "
                  f"{rec['cached_updates_per_s']:12.4g} {rec['bytes_per_param']:8.1f} "
                  f"{rec['rss_bytes_per_param'] or float('nan'):8.1f} "
                  f"{rec['reserved_bytes_per_param']:8.1f}", flush=True)
            if args.json:
                append_jsonl(args.json, [rec])
    return 0


if __name__ == "__main__":
    from ..kv.store import huge_pages_off
    parser = argparse.ArgumentParser(prog="python -m mpips.bench.store", description=__doc__)
    add_arguments(parser)
    huge_pages_off()
    raise SystemExit(run(parser.parse_args()))
