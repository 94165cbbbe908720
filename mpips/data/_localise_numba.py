"""The compiled kernel of :func:`mpips.data.localise.localise` (numba, the
``fast`` extra). Importing this module imports numba; ImportError without it."""

import numba
import numpy as np

DIGIT_BITS = 11
PASSES = 6


@numba.njit(nogil=True, cache=True)
def radix_localise(keys, unique_out, columns_out):  # pragma: no cover - compiled
    """Sorted unique keys into unique_out[:u], columns_out[i] = position of
    keys[i] among them; returns u. An LSD radix sort of (key, index) pairs:
    a fixed number of linear passes, where a comparison sort's cost grows
    with log n and its branches mispredict on hashed keys."""
    n = keys.size
    src_k = keys.copy()
    src_i = np.arange(n).astype(np.int32)
    dst_k = np.empty_like(src_k)
    dst_i = np.empty_like(src_i)
    mask = np.uint64((1 << DIGIT_BITS) - 1)
    count = np.zeros((1 << DIGIT_BITS) + 1, np.int64)
    for p in range(PASSES):
        shift = np.uint64(p * DIGIT_BITS)
        count[:] = 0
        for j in range(n):
            count[np.int64((src_k[j] >> shift) & mask) + 1] += 1
        if count.max() == n:
            continue  # every key has this digit: the order stands
        for b in range(1 << DIGIT_BITS):
            count[b + 1] += count[b]
        for j in range(n):
            d = np.int64((src_k[j] >> shift) & mask)
            at = count[d]
            dst_k[at] = src_k[j]
            dst_i[at] = src_i[j]
            count[d] = at + 1
        src_k, dst_k = dst_k, src_k
        src_i, dst_i = dst_i, src_i
    u = -1
    for j in range(n):
        k = src_k[j]
        if u < 0 or k != unique_out[u]:
            u += 1
            unique_out[u] = k
        columns_out[src_i[j]] = u
    return u + 1
