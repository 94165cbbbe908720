"""``bench path``: where the time of one request goes, stage by stage.

One process, no MPI: each stage of a pushpull of N random keys (vdim 1,
float32, a store of 2N keys, ``add``) runs through the same functions the
kv path calls, timed alone (best of several runs, keys and store warm):

    worker:  check (sorted, unique), slice by the ring, signature (key
             caching), framing (header and sections as sent)
    wire:    one copy of the message's bytes (what Open MPI's single-copy
             CMA transfer does between ranks of one host; bench kv measures
             the real transfer)
    server:  deframing, check, the store's pushpull (lookup, gather, handle,
             scatter) three ways: a list not seen before (a search), a
             repeated list (cached slots, the keys compared), a list named by
             the key cache's signature (cached slots, trusted); reply framing
    worker:  reply deframing and copy into the output

Pass ``--profile`` to run the whole path under cProfile as well.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from ..filters.base import signature
from ..handles import Add
from ..keys import check_keys, hash_feature, strictly_increasing
from ..kv.index import search_kernel_line
from ..kv.store import Signed, SortedStore
from ..ring import KeyRing
from ..transport.message import GATHER_MIN_BYTES, Message, Op, decode, encode
from . import append_jsonl


def _best(fn: Callable[[], object], budget: float = 0.2) -> float:
    """Seconds of the fastest of several runs of ``fn`` (at least 3, about
    ``budget`` seconds in all)."""
    fn()
    runs, best, spent = 0, float("inf"), 0.0
    while runs < 3 or (spent < budget and runs < 1000):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def _wire(msg: Message) -> np.ndarray:
    """The message's bytes in one buffer (what the receiver holds)."""
    parts = encode(msg)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _framing(msg: Message) -> object:
    """What the van does before its sends: small messages are packed into one
    buffer, large ones go from the arrays as they are (no copy)."""
    parts = encode(msg)
    if sum(p.nbytes for p in parts) < GATHER_MIN_BYTES:
        return np.concatenate(parts)
    return parts


def stages(n: int, seed: int = 0) -> dict[str, float]:
    """Seconds per stage of one pushpull of ``n`` keys."""
    rng = np.random.default_rng(seed)
    stored = np.sort(hash_feature(np.arange(2 * n, dtype=np.uint64), salt=seed))
    keys = np.sort(rng.choice(stored, n, replace=False))
    vals = np.ones((n, 1), np.float32)
    out = np.empty_like(vals)
    ring = KeyRing(1, 1, 0)
    store = SortedStore(1, np.float32, Add())
    store.push(stored, np.zeros(stored.size, np.float32))
    request = Message(op=Op.PUSHPULL, ts=1, keys=[keys], vals=[vals], vdim=1)
    wire = _wire(request)
    landing = np.empty_like(wire)
    msg = decode(wire, 0)
    rows = store.pushpull(msg.keys, msg.vals, sender=(2, 0))
    reply_wire = _wire(Message(op=Op.PULL_REPLY, ts=1, vals=[rows], vdim=1))

    def reply() -> None:
        got = decode(reply_wire, 1)
        out[:] = got.vals

    fresh = iter(range(1 << 62))  # a requester never seen: its list is searched
    store_call = lambda who: store.pushpull(msg.keys, msg.vals, sender=who)  # noqa: E731
    return {
        "worker: check": _best(lambda: check_keys(keys)),
        "worker: slice by ring": _best(lambda: ring.slice_by_server(keys)),
        "worker: signature (key cache)": _best(lambda: signature(keys)),
        "worker: framing": _best(lambda: _framing(request)),
        "wire: one copy of the bytes": _best(lambda: np.copyto(landing, wire)),
        "server: deframing": _best(lambda: decode(wire, 0)),
        "server: check": _best(lambda: (strictly_increasing(msg.keys),
                                        ring.slice(msg.keys))),
        "server: store, new list (search)": _best(lambda: store_call(("new", next(fresh)))),
        "server: store, repeated list (compare)": _best(lambda: store_call((2, 0))),
        "server: store, cached list (signature)": _best(lambda: store_call(Signed(2, 1))),
        "server: reply framing": _best(
            lambda: _framing(Message(op=Op.PULL_REPLY, ts=1, vals=[rows], vdim=1))),
        "worker: reply deframing + copy": _best(reply),
    }


def totals(st: dict[str, float]) -> dict[str, float]:
    """One round trip, the stages added up (no overlap): a list the server
    has not seen, a repeated one, and one named by the key cache (its keys
    not sent: 8 of the 12 bytes per key; checked when it was stored)."""
    common = sum(v for k, v in st.items() if "store" not in k and "signature" not in k)
    return {
        "round trip, new list": common + st["server: store, new list (search)"],
        "round trip, repeated list": common + st["server: store, repeated list (compare)"],
        "round trip, key caching": (common - st["wire: one copy of the bytes"] * 2 / 3
                                    - st["server: check"]
                                    + st["worker: signature (key cache)"]
                                    + st["server: store, cached list (signature)"]),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1e3,1e4,1e5,1e6", help="request sizes in keys")
    p.add_argument("--json", help="append JSON lines to this file")
    p.add_argument("--profile", action="store_true",
                   help="also print the top functions of the whole path under cProfile")


def run(args: argparse.Namespace) -> int:
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print("bench path: one pushpull of N random keys (vdim 1 float32, a store of 2N keys), "
          "each stage alone, best of several runs, in microseconds; no MPI (bench kv "
          "measures the transfer and the overlap)"
          f"; new lists searched by {search_kernel_line()}")
    results = {n: stages(n) for n in sizes}
    names = list(next(iter(results.values())))
    print(f"{'stage':42s}" + "".join(f"{n:>12d}" for n in sizes))
    for name in names:
        print(f"{name:42s}" + "".join(f"{results[n][name] * 1e6:12.1f}" for n in sizes))
    sums = {n: totals(results[n]) for n in sizes}
    for name in next(iter(sums.values())):
        print(f"{name:42s}" + "".join(f"{sums[n][name] * 1e6:12.1f}" for n in sizes))
        print(f"{'  = keys/s, one request at a time':42s}"
              + "".join(f"{n / sums[n][name]:12.3g}" for n in sizes))
    if args.json:
        append_jsonl(args.json, [{"keys": n, "stages_s": results[n], **sums[n]} for n in sizes])
    if args.profile:
        _profile(sizes[-1])
    return 0


def _profile(n: int) -> None:
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        stages(n)
    profiler.disable()
    print(f"\ncProfile of bench path at {n} keys (20 rounds of every stage):")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
