"""Significantly-modified filter: push an entry only when its change is big
enough; the rest accumulates at the sender, so nothing is lost, only delayed.

The sender keeps a residual per key (sorted keys, float64 rows, no Python
object per key). A push adds the residual to the pushed rows; an entry is sent
when some coordinate of that sum exceeds the threshold: absolute (``|acc| >
threshold``) or relative to the request (``|acc| > threshold * mean |acc|``,
scale free). Entries not sent keep their sum as the residual. Sent entries
keep what float32 rounding of the sent value left over, so at every moment
``sum(sent) + sum(residual) == sum(pushed)`` up to float64 arithmetic.
:meth:`Residuals.take_all` returns what is left (pushed by ``KVWorker.flush``).
"""

from __future__ import annotations

import numpy as np


class Residuals:
    """Per-key float64 rows held back at the sender (sorted keys)."""

    def __init__(self, vdim: int):
        self.vdim = vdim
        self.keys = np.empty(0, np.uint64)
        self.rows = np.empty((0, vdim), np.float64)

    def __len__(self) -> int:
        return int(self.keys.size)

    def accumulate(self, keys: np.ndarray, vals: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pushed rows plus residuals: ``(acc, pos, found)``."""
        acc = np.asarray(vals, dtype=np.float64).reshape(keys.size, self.vdim).copy()
        pos = np.searchsorted(self.keys, keys)
        found = np.zeros(keys.size, bool)
        if self.keys.size:
            found = self.keys[np.minimum(pos, self.keys.size - 1)] == keys
            acc[found] += self.rows[pos[found]]
        return acc, pos, found

    def settle(self, keys: np.ndarray, acc: np.ndarray, sent_rows: np.ndarray,
               send: np.ndarray, pos: np.ndarray, found: np.ndarray) -> None:
        """Keep ``acc - sent`` as each key's residual (``acc`` where not sent)."""
        rest = acc.copy()
        rest[send] -= sent_rows.astype(np.float64)
        self.rows[pos[found]] = rest[found]
        new = ~found & (rest != 0).any(axis=1)
        if new.any():
            at = pos[new]
            self.keys = np.insert(self.keys, at, keys[new])
            self.rows = np.insert(self.rows, at, rest[new], axis=0)

    def take_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every nonzero residual, and forget them."""
        keep = (self.rows != 0).any(axis=1)
        keys, rows = self.keys[keep], self.rows[keep]
        self.keys = np.empty(0, np.uint64)
        self.rows = np.empty((0, self.vdim), np.float64)
        return keys, rows

    @property
    def mass(self) -> np.ndarray:
        return self.rows.sum(axis=0)


class SignificantFilter:
    """Send only entries whose accumulated change exceeds ``threshold``."""

    def __init__(self, vdim: int, threshold: float, relative: bool = False):
        if threshold < 0:
            raise ValueError(f"significant: threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.relative = relative
        self.residuals = Residuals(vdim)

    def __call__(self, keys: np.ndarray, vals: np.ndarray, dtype: np.dtype
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The (keys, rows) to send now; the rest is kept."""
        acc, pos, found = self.residuals.accumulate(keys, vals)
        size = np.abs(acc).max(axis=1) if acc.size else np.empty(0)
        bar = self.threshold * (float(np.abs(acc).mean()) if self.relative and acc.size
                                else 1.0)
        send = size > bar
        sent_rows = acc[send].astype(dtype)
        self.residuals.settle(keys, acc, sent_rows, send, pos, found)
        return keys[send], sent_rows
