"""Localising a minibatch: global uint64 keys -> sorted unique keys + local columns.

The kv layer wants each request as sorted unique keys; the model math wants
small dense column indices. :func:`localise` gives both with one sort: a
numba radix sort where the ``fast`` extra is installed (loaded in the
background by the first large minibatch), else a radix sort by numpy on the
keys' 32 leading bits (:func:`localise_radix`). ``localise_numpy`` (numpy's
argsort) stays the reference both are tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpips.compiled import Kernel

# Minibatches of at least COMPILED_MIN_KEYS keys take the compiled kernel
# once it is loaded; loading starts after COMPILED_AFTER_KEYS keys were
# localised in this process: numba's import costs about a second of CPU, which
# the kernel wins back only over some 3e7 keys (a small job never imports it).
COMPILED_MIN_KEYS = 4096
COMPILED_AFTER_KEYS = 1 << 24
_localised = 0


def _load_radix_localise() -> Callable:
    from mpips.data._localise_numba import radix_localise
    one = np.zeros(1, np.uint64)
    radix_localise(one, np.empty(1, np.uint64), np.empty(1, np.int32))  # compile
    return radix_localise


KERNEL = Kernel("radix-localise", _load_radix_localise)


def localise(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique_keys, columns)`` with ``unique_keys[columns] == keys``.

    ``unique_keys`` is sorted and unique (uint64); ``columns`` is int32 when it
    fits (it always does for a minibatch), else int64. Same result as
    ``np.unique(keys, return_inverse=True)`` with less work: one radix sort,
    one mask, one cumulative sum, one scatter.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.size == 0:
        return keys.copy(), np.zeros(0, np.int32)
    global _localised
    if keys.size >= COMPILED_MIN_KEYS and keys.size < 2**31:
        kernel = KERNEL.get()
        if kernel is None:
            _localised += keys.size
            if _localised >= COMPILED_AFTER_KEYS:
                KERNEL.prepare()
        else:
            unique = np.empty(keys.size, np.uint64)
            columns = np.empty(keys.size, np.int32)
            return unique[:kernel(keys, unique, columns)].copy(), columns
    return localise_radix(keys)


def radix_sort(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, keys[order])`` of non-empty uint64 ``keys``: two stable passes of
    numpy's 16-bit radix sort on the 32 bits below the highest bit set in
    any key, then, where distinct keys share those bits and came out of
    order, those keys sorted whole. Keys are hashes or small ids: the 32
    bits decide all but a few ties, and a 16-bit digit sorts in linear time,
    where ``np.argsort`` of uint64 compares."""
    shift = max(0, int(keys.max()).bit_length() - 32)
    top = (keys >> np.uint64(shift)).astype(np.uint32)
    order = np.argsort(top.astype(np.uint16), kind="stable")
    order = order[np.argsort((top[order] >> 16).astype(np.uint16), kind="stable")]
    ordered = keys[order]
    if shift == 0:
        return order, ordered  # the 32 bits are the whole keys
    wrong = np.flatnonzero(ordered[1:] < ordered[:-1])
    if wrong.size:
        # Equal leading bits are adjacent now: sort each run of them that
        # holds a pair out of order by the whole key, in its place.
        top = top[order]
        runs = np.unique(top[wrong])
        lo = np.searchsorted(top, runs, "left")
        hi = np.searchsorted(top, runs, "right")
        lengths = hi - lo
        if 2 * int(lengths.sum()) > keys.size:  # mostly ties (ids and one large key)
            order = np.argsort(keys)
            return order, keys[order]
        at = np.repeat(lo - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        fix = np.argsort(ordered[at], kind="stable")
        order[at], ordered[at] = order[at][fix], ordered[at][fix]
    return order, ordered


def localise_radix(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`localise` by numpy with :func:`radix_sort`."""
    return _ranked(*radix_sort(keys))


def localise_numpy(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`localise` by numpy's argsort (the reference)."""
    order = np.argsort(keys)  # not stable: equal keys need no order here
    return _ranked(order, keys[order])


def _ranked(order: np.ndarray, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, columns) from an ``order`` and the keys in it."""
    size = ordered.size
    new = np.empty(size, bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    index_type = np.int32 if size < 2**31 else np.int64
    rank = np.cumsum(new, dtype=index_type) - 1
    columns = np.empty(size, index_type)
    columns[order] = rank
    return ordered[new], columns
