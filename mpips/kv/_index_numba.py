"""The compiled kernel of :class:`mpips.kv.index.RadixIndex` (numba, the
``fast`` extra). Importing this module imports numba; ImportError without it."""

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def radix_search(run, base, shift, starts, queries, out):  # pragma: no cover - compiled
    """out[i] = np.searchsorted(run, queries[i]) through the bucket starts.

    Two passes: the bucket starts of all queries first (independent loads the
    CPU overlaps), then a short scan of each bucket."""
    last_bucket = starts.size - 1
    n = run.size
    for i in range(queries.size):
        k = queries[i]
        j = 0
        if k >= base:
            j = min(np.int64((k - base) >> shift), last_bucket)
        out[i] = starts[j]
    for i in range(queries.size):
        k = queries[i]
        pos = out[i]
        while pos < n and run[pos] < k:
            pos += 1
        out[i] = pos
