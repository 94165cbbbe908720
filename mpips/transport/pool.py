"""Receive buffers that are used again once nothing points into them.

A received message is decoded into views of its buffer (keys, values), and
the layers above keep those views as long as they need them: a store may
keep a key list, a deferred request waits for a ring update. So a buffer can
be reused only when no view of it is alive, which its reference count tells:
every numpy view of a buffer holds a reference to it. The pool reuses such
buffers for large messages instead of allocating fresh memory for each one:
on this kind of machine (a VM) first-touch page faults of a fresh 16 MB
buffer cost more than moving its bytes (measured by ``bench path``).
"""

from __future__ import annotations

import sys

import numpy as np

# Messages below this many bytes get a fresh buffer: small allocations come
# from the heap, already mapped, and the pool's scan would cost more.
POOL_MIN_BYTES = 1 << 18

# sys.getrefcount of a pooled buffer nobody else holds: the pool's list slot,
# the loop variable and getrefcount's own argument.
_FREE_REFS = 3


class RecvPool:
    """Large receive buffers, reused when free, within a byte budget."""

    def __init__(self, budget: int = 256 << 20):
        self.budget = budget
        self.buffers: list[np.ndarray] = []
        self.held = 0
        self.reused = 0
        self.allocated = 0

    def get(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` bytes (a view of a pooled buffer when one
        is free and not far larger than asked for)."""
        if nbytes < POOL_MIN_BYTES or self.budget <= 0:
            return np.empty(nbytes, dtype=np.uint8)
        best = -1
        for i in range(len(self.buffers)):  # not enumerate: its tuple holds a reference
            buf = self.buffers[i]
            if nbytes <= buf.size <= 2 * nbytes and sys.getrefcount(buf) == _FREE_REFS \
                    and (best < 0 or buf.size < self.buffers[best].size):
                best = i
        buf = None
        if best >= 0:
            self.reused += 1
            return self.buffers[best][:nbytes]
        self.allocated += 1
        buf = np.empty(nbytes, dtype=np.uint8)
        self._drop_free(nbytes)
        if self.held + nbytes <= self.budget:
            self.buffers.append(buf)
            self.held += nbytes
        return buf

    def _drop_free(self, need: int) -> None:
        """Make room for ``need`` bytes by forgetting free buffers, smallest first."""
        if self.held + need <= self.budget:
            return
        for buf in sorted(self.buffers, key=lambda b: b.size):
            if sys.getrefcount(buf) - 1 == _FREE_REFS:  # the sorted list holds one more
                self.buffers = [b for b in self.buffers if b is not buf]
                self.held -= buf.size
                if self.held + need <= self.budget:
                    return
