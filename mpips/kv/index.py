"""A radix index over a sorted run of uint64 keys: where a never-seen key list
lies in a store, at a fraction of a binary search's cost.

``np.searchsorted`` spends about 20 dependent probes per key in a run of 1e6
keys, most of them cache misses once the run outgrows the cache. The keys a
server stores are hashes, spread evenly over its range, so a table of where
each of ~n/2 equal slices of that range starts (``starts``) puts a key
within a handful of stored keys in one probe; a branch-free binary search of
``width_bits`` steps over that bucket finishes it, every step one
vectorised pass over the queries (docs/performance.md, `bench path`, has the
figures). With numba installed (the ``fast`` extra) one compiled pass does
the same with a fraction of the memory traffic; the numpy passes stay the
reference and the fallback (``MPIPS_NUMBA=0`` turns numba off). Keys that
are not evenly spread make wide buckets: the index then declines
(:meth:`RadixIndex.build` returns None) and the store keeps its plain search.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..compiled import Kernel

# Stored keys per bucket on average; wider buckets cost more search steps,
# narrower ones a larger table (4 bytes per bucket).
KEYS_PER_BUCKET = 2
# Buckets wider than 2^MAX_WIDTH_BITS keys: the keys are too uneven for the index.
MAX_WIDTH_BITS = 6
# Without numba, runs below NUMPY_MIN_RUN keys searched for fewer than
# NUMPY_MIN_QUERIES keys take np.searchsorted (bench path: 1e3 keys in 2e3).
NUMPY_MIN_RUN = 1 << 16
NUMPY_MIN_QUERIES = 2048
# Keys counted per pass while building: temporaries stay in the cache.
BUILD_CHUNK = 1 << 16
# A process loads the numba kernel (in the background) once its indexes have
# searched COMPILED_AFTER_KEYS keys in runs of at least COMPILED_MIN_RUN keys:
# numba's import and the compilation take CPU from the server's own thread
# (they hold the GIL) and from the ranks it shares the cores with, which the
# kernel's saving per key wins back only over many keys (docs/performance.md,
# "Since then a store's main run gets a radix index").
COMPILED_MIN_RUN = 1 << 16
COMPILED_AFTER_KEYS = 1 << 26
_searched = 0


def _load_radix_search() -> Callable:
    from ._index_numba import radix_search
    one = np.zeros(1, dtype=np.uint64)
    # compile (or load numba's disk cache) for the store's types
    radix_search(one, one[0], one[0], np.zeros(2, np.int32), one, np.empty(1, np.intp))
    radix_search(one, one[0], one[0], np.zeros(2, np.int64), one, np.empty(1, np.intp))
    return radix_search


KERNEL = Kernel("radix-search", _load_radix_search)


def prepare_compiled_search() -> None:
    """Load the kernel in the background (searches call this once they
    searched COMPILED_AFTER_KEYS keys in large runs; small jobs never import
    numba); until it is ready, searches take the numpy passes."""
    KERNEL.prepare()


def _count_search(keys: int) -> None:
    """Keys searched in a run of COMPILED_MIN_RUN keys or more while the
    kernel is not loaded; enough of them start its loading."""
    global _searched
    _searched += keys
    if _searched >= COMPILED_AFTER_KEYS:
        prepare_compiled_search()


def load_compiled_search() -> Callable | None:
    """Load the kernel now (in this thread) and return it, or None."""
    return KERNEL.load()


def compiled_search() -> Callable | None:
    """The numba kernel of :meth:`RadixIndex.search` once loaded: None without
    numba, with ``MPIPS_NUMBA=0``, or before :func:`prepare_compiled_search`
    loaded it (a search never waits for the compiler)."""
    return KERNEL.get()


class RadixIndex:
    """Positions of keys in one sorted, duplicate-free uint64 run, as
    ``np.searchsorted(run, queries)`` gives them (left side)."""

    def __init__(self, size: int, base: int, shift: int, starts: np.ndarray,
                 width_bits: int):
        self.size = size
        self._base = np.uint64(base)
        self._shift = np.uint64(shift)
        self._starts = starts    # starts[b]: first position at or past bucket b's bound
        self._width_bits = width_bits

    @classmethod
    def build(cls, run: np.ndarray) -> RadixIndex | None:
        """The index of ``run``, or None where the index would not pay: fewer
        than 1024 keys, or keys so uneven that some bucket holds more than
        2^MAX_WIDTH_BITS of them."""
        n = run.size
        if n < 1024:
            return None
        base = int(run[0])
        span = int(run[-1]) - base + 1
        bits = max(1, int(np.ceil(np.log2(n / KEYS_PER_BUCKET))))
        shift = max(0, span.bit_length() - bits)
        buckets = ((span - 1) >> shift) + 1
        # keys per bucket, counted chunk by chunk (a search of every bucket's
        # bound would cost a binary search each; temporaries of the run's
        # size would cost page faults): a chunk's buckets are one sorted span
        starts = np.zeros(buckets + 2, dtype=np.int32 if n < 2**31 else np.int64)
        counts = starts[1: buckets + 1]
        for a in range(0, n, BUILD_CHUNK):
            b = run[a: a + BUILD_CHUNK] - np.uint64(base)
            b >>= np.uint64(shift)
            first = int(b[0])
            b -= np.uint64(first)
            counts[first: first + int(b[-1]) + 1] += np.bincount(b.view(np.int64))
        width_bits = int(counts.max()).bit_length()
        if width_bits > MAX_WIDTH_BITS:
            return None
        np.cumsum(counts, out=counts)
        starts[buckets + 1] = n  # keys above the run
        return cls(n, base, shift, starts, width_bits)

    def search(self, run: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """``np.searchsorted(run, queries)`` (queries in any order). ``run``
        is the run the index was built from (the index keeps no reference to
        it: a store's buffers move when they grow)."""
        if run.size != self.size:
            raise ValueError(f"index of {self.size} keys asked about a run of {run.size}")
        kernel = compiled_search()
        if kernel is not None:
            out = np.empty(queries.size, dtype=np.intp)
            kernel(run, self._base, self._shift, self._starts, queries, out)
            return out
        if self.size >= COMPILED_MIN_RUN:
            _count_search(queries.size)
        if queries.size < NUMPY_MIN_QUERIES and self.size < NUMPY_MIN_RUN:
            # a run in cache and few queries: the numpy passes' fixed costs
            # exceed a binary search
            return np.searchsorted(run, queries)
        return self.search_numpy(run, queries)

    def search_numpy(self, run: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """:meth:`search` in numpy passes alone."""
        below = queries < self._base
        bucket = queries - self._base  # wraps for keys below the base: fixed below
        bucket >>= self._shift
        np.minimum(bucket, self._starts.size - 1, out=bucket)
        if below.any():
            bucket[below] = 0
        pos = self._starts[bucket].astype(np.intp)
        # pos is at most the answer and the answer at most pos + width; halve
        # the gap: advance by step where the key step - 1 ahead is still
        # below. A probe past the run reads its last key instead: a query
        # above it advances past the end, and the final clip sets it to size.
        step = 1 << (self._width_bits - 1) if self._width_bits else 0
        probe = np.empty_like(pos)
        last = self.size - 1
        while step:
            np.add(pos, step - 1, out=probe)
            np.minimum(probe, last, out=probe)
            pos += (run[probe] < queries) * step
            step >>= 1
        np.minimum(pos, self.size, out=pos)
        return pos


def search_kernel_line() -> str:
    """What searches new key lists in this process, for benchmark headers
    (loads the kernel first, so that timings do not include the compiler)."""
    if load_compiled_search() is not None:
        return "the radix index, numba kernel"
    return f"the radix index, numpy passes ({KERNEL.why_not()})"
