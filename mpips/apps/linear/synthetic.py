"""The demo's built-in data: rows drawn from a planted sparse logistic model."""

from __future__ import annotations

import numpy as np

from ...data.reader import Minibatch
from ...keys import hash_feature
from .model import sigmoid


class Synthetic:
    """Rows from a planted sparse logistic model; feature popularity falls off
    as a power law, as in click logs."""

    def __init__(self, features: int, nnz: int, seed: int):
        rng = np.random.default_rng([seed, 0])
        self.features, self.nnz, self.seed = features, nnz, seed
        self.w_true = rng.normal(0.0, 1.0, features) * (rng.random(features) < 0.3)

    def rows(self, n: int, stream: int) -> tuple[Minibatch, np.ndarray]:
        """``n`` rows of stream ``stream`` (0: the test set) and their true margins."""
        rng = np.random.default_rng([self.seed, 1, stream])
        ids = (self.features * rng.random((n, self.nnz)) ** 2.0).astype(np.int64)
        ids = np.minimum(ids, self.features - 1)
        ids.sort(axis=1)
        margin = self.w_true[ids].sum(axis=1) * (3.0 / np.sqrt(self.nnz))
        y = (rng.random(n) < sigmoid(margin)).astype(np.float32)
        indptr = np.arange(0, n * self.nnz + 1, self.nnz, dtype=np.int64)
        keys = hash_feature(ids.ravel().astype(np.uint64))
        return Minibatch(y, indptr, keys, None), margin
