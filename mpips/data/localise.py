"""Localising a minibatch: global uint64 keys -> sorted unique keys + local columns.

The kv layer wants each request as sorted unique keys; the model math wants
small dense column indices. :func:`localise` gives both with one sort: a
numba radix sort where the ``fast`` extra is installed (loaded in the
background by the first large minibatch), else numpy's argsort, which stays
the reference.
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
    ``np.unique(keys, return_inverse=True)`` with less work: one (unstable)
    argsort, one mask, one cumulative sum, one scatter.
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
    return localise_numpy(keys)


def localise_numpy(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`localise` by numpy alone (the reference)."""
    order = np.argsort(keys)  # not stable: equal keys need no order here
    ordered = keys[order]
    new = np.empty(keys.size, bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    index_type = np.int32 if keys.size < 2**31 else np.int64
    rank = np.cumsum(new, dtype=index_type) - 1
    columns = np.empty(keys.size, index_type)
    columns[order] = rank
    return ordered[new], columns
