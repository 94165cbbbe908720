"""Count-min sketch storage for one server, and the saved sketch of a finished job.

A :class:`CountMinStore` is a kv server store (see :class:`mpips.kv.Table`'s
``store`` factory) for a table of item counts. Pushes carry sorted unique item
keys (64-bit, already mixed by :func:`mpips.keys.hash_feature`) and (n, 1)
int64 counts; pulls return (n, 1) int64 estimates. The server never stores a
key: it holds ``depth`` rows of ``width`` int64 counters for the keys of its
ring ranges, and a small vectorised candidate set for heavy hitters.

Sizes: ``width = 2**ceil(log2(e / epsilon))`` (``e/epsilon`` rounded up to a
power of two, so a column is a shift), ``depth = ceil(ln(1 / delta))``. Every
estimate is >= the true count, and exceeds it by more than ``epsilon * N_s``
(``N_s`` = the total count this server received, at most the stream total N)
with probability at most ``delta``.

Row hashes are multiply-shift: ``col_j(key) = (a_j * key mod 2**64) >> (64 -
log2 width)`` with odd ``a_j`` drawn from the job seed. Multiply-shift is
universal (collision probability <= 2/width over the choice of ``a_j``); the
keys it sees are already outputs of the 64-bit mixer, for which it behaves
like a random function, and the tests check the epsilon bound on streams with
known counts. Three uint64 operations per row and key, no Python loop over keys.

Updates, per request of n keys and counts c:

* plain: ``np.add.at`` on each row's flat cells (duplicates in a request's
  cells, distinct keys sharing a counter, add up correctly);
* conservative (``conservative = true``): with e = the current estimates
  (min over rows), every cell becomes ``max(cell, e + c)`` over the keys that
  hit it (``np.maximum.at``). Each key's cells stay >= its true count (they
  were >= e >= its old count), and no cell grows more than under the plain
  update, so the epsilon bound still holds while overestimates shrink.

Heavy hitters: the server keeps at most ``candidates`` (key, estimate) pairs
in two arrays. A request's key can only enter if its row-0 counter (an upper
bound of its estimate) beats the smallest kept estimate, so the full min over
rows is computed for few keys; the merge is one ``np.unique`` and one
``argpartition`` over at most ``candidates + entrants`` entries. Stored
estimates of candidates not in a request go stale-low (counts only grow);
queries re-estimate every candidate before ranking.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...keys import KEY_MAX, mix64
from ...ring import KeyRing

SKETCH_FORMAT = "mpips-countmin"
SKETCH_VERSION = 1


@dataclass(frozen=True)
class SketchParams:
    """What defines a sketch: sizes from epsilon/delta, the hash seed, the mode."""

    epsilon: float
    delta: float
    seed: int = 0
    conservative: bool = False
    candidates: int = 1024

    @property
    def width(self) -> int:
        return 1 << max(1, math.ceil(math.log2(math.e / self.epsilon)))

    @property
    def depth(self) -> int:
        return max(1, math.ceil(math.log(1.0 / self.delta)))

    def multipliers(self) -> np.ndarray:
        """The odd multipliers ``a_j`` of the row hashes (uint64, one per row)."""
        a = mix64(np.arange(self.depth, dtype=np.uint64) + np.uint64(self.seed * 1000 + 1))
        return a | np.uint64(1)


def row_cells(keys: np.ndarray, multipliers: np.ndarray, width: int) -> np.ndarray:
    """(depth, n) flat cell indices (row * width + column) of sorted ``keys``."""
    shift = np.uint64(64 - int(width).bit_length() + 1)
    depth = multipliers.size
    cells = np.empty((depth, keys.size), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(depth):  # a loop over rows (a handful), not keys
            row = cells[j]
            np.multiply(keys, multipliers[j], out=row)
            row >>= shift
            row += np.uint64(j * width)
    return cells.view(np.int64)


class CountMinStore:
    """A count-min sketch as a kv server store: push adds counts, pull estimates."""

    vdim = 1

    def __init__(self, params: SketchParams):
        self.params = params
        self.depth, self.width = params.depth, params.width
        self.multipliers = params.multipliers()
        self.counters = np.zeros(self.depth * self.width, dtype=np.int64)
        self.total = 0          # sum of all counts received
        self.updates = 0        # (key, count) pairs applied
        self.cand_keys = np.empty(0, dtype=np.uint64)
        self.cand_est = np.empty(0, dtype=np.int64)
        self.seconds = 0.0      # time spent in push: the server side of the profile

    # ---- the store interface the kv server uses ----------------------------------
    def __len__(self) -> int:
        return int(self.updates)

    @property
    def nbytes(self) -> int:
        return self.counters.nbytes + self.cand_keys.nbytes + self.cand_est.nbytes

    def push(self, keys: np.ndarray, vals: np.ndarray, sender: int = -1) -> None:
        counts = np.asarray(vals).reshape(-1).astype(np.int64, copy=False)
        if counts.size != keys.size:
            raise ValueError(f"{counts.size} counts for {keys.size} keys")
        if keys.size == 0:
            return
        t0 = time.perf_counter()
        if counts.min() < 0:
            i = int(np.argmin(counts))
            raise ValueError(f"negative count {int(counts[i])} for key {int(keys[i])}: a "
                             "count-min sketch takes increments only")
        cells = row_cells(keys, self.multipliers, self.width)
        if self.params.conservative:
            target = self._estimate_cells(cells) + counts
            for j in range(self.depth):
                np.maximum.at(self.counters, cells[j], target)
        else:
            for j in range(self.depth):
                np.add.at(self.counters, cells[j], counts)
        self.total += int(counts.sum())
        self.updates += keys.size
        self._offer(keys, cells)
        self.seconds += time.perf_counter() - t0

    def pull(self, keys: np.ndarray, out: np.ndarray | None = None,
             sender: int = -1) -> np.ndarray:
        est = self.estimate(keys)
        if out is None:
            return est.reshape(-1, 1)
        out[:, 0] = est
        return out

    def pushpull(self, keys: np.ndarray, vals: np.ndarray, sender: int = -1) -> np.ndarray:
        self.push(keys, vals, sender)
        return self.pull(keys)

    # ---- replication (see mpips.kv.server): owner -> replicas ------------------------
    @property
    def keys(self) -> np.ndarray:
        """What a range repair copies: not item keys (the sketch keeps none) but
        the marker ``[KEY_MAX, 0, 1, ..., cells - 1]``. A real request's keys are
        sorted and unique, so none longer than one starts with KEY_MAX: the
        marker cannot be mistaken for a request."""
        return np.concatenate(([KEY_MAX], np.arange(self.counters.size, dtype=np.uint64)))

    def _is_snapshot(self, keys: np.ndarray) -> bool:
        return keys.size == self.counters.size + 1 and keys[0] == KEY_MAX

    def rows_with_state(self, keys: np.ndarray) -> np.ndarray:
        """After a push of ``keys``: their cells' counters, (n, depth + 1), the
        last column the running total. For the snapshot marker: every counter,
        then the total, (cells + 1, 1)."""
        if self._is_snapshot(keys):
            return np.append(self.counters, self.total).reshape(-1, 1)
        cells = row_cells(keys, self.multipliers, self.width)
        rows = np.empty((keys.size, self.depth + 1), dtype=np.int64)
        rows[:, :self.depth] = np.take(self.counters, cells).T
        rows[:, self.depth] = self.total
        return rows

    def assign_rows(self, keys: np.ndarray, rows: np.ndarray | None) -> None:
        """On a replica: set the cells the owner sent (an assignment, so a
        repeated message changes nothing), or a whole snapshot."""
        if keys.size == 0 or rows is None:
            return
        rows = np.asarray(rows, dtype=np.int64)
        if self._is_snapshot(keys):
            flat = rows.reshape(-1)
            self.counters[...] = flat[:-1]
            self.total = int(flat[-1])
            self.cand_keys = np.empty(0, np.uint64)  # refilled by the next pushes
            self.cand_est = np.empty(0, np.int64)
            return
        rows = rows.reshape(keys.size, self.depth + 1)
        cells = row_cells(keys, self.multipliers, self.width)
        self.counters[cells] = rows[:, :self.depth].T
        self.total = int(rows[0, self.depth])
        self.updates += keys.size
        self._offer(keys, cells)

    # ---- estimates and heavy hitters ----------------------------------------------
    def estimate(self, keys: np.ndarray) -> np.ndarray:
        """Estimated counts of ``keys`` (int64): the minimum over the rows."""
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.size == 0:
            return np.zeros(0, dtype=np.int64)
        return self._estimate_cells(row_cells(keys, self.multipliers, self.width))

    def _estimate_cells(self, cells: np.ndarray) -> np.ndarray:
        return np.minimum.reduce(np.take(self.counters, cells), axis=0)

    def _offer(self, keys: np.ndarray, cells: np.ndarray) -> None:
        """Let the request's keys into the heavy-hitter candidates if they beat
        the smallest kept estimate (only a full set filters)."""
        cap = self.params.candidates
        if cap <= 0:
            return
        if self.cand_keys.size >= cap:
            bar = self.cand_est.min()
            # Row 0's counter bounds the estimate from above: a cheap filter.
            maybe = np.flatnonzero(np.take(self.counters, cells[0]) > bar)
            if maybe.size == 0:
                return
            est = self._estimate_cells(cells[:, maybe])
            keep = est > bar
            new_keys, new_est = keys[maybe[keep]], est[keep]
        else:
            new_keys, new_est = keys, self._estimate_cells(cells)
        if new_keys.size == 0:
            return
        # New estimates come first: for keys already kept, unique's first
        # occurrence is then the fresh (larger) estimate.
        all_keys = np.concatenate([new_keys, self.cand_keys])
        all_est = np.concatenate([new_est, self.cand_est])
        uniq, first = np.unique(all_keys, return_index=True)
        est = all_est[first]
        if uniq.size > cap:
            top = np.argpartition(est, uniq.size - cap)[uniq.size - cap:]
            uniq, est = uniq[top], est[top]
        self.cand_keys, self.cand_est = uniq, est

    def top(self, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidates re-estimated now, largest first: (keys, estimates)."""
        est = self.estimate(self.cand_keys)
        order = np.argsort(-est, kind="stable")
        if k is not None:
            order = order[:k]
        return self.cand_keys[order], est[order]

    # ---- saving ---------------------------------------------------------------------
    def save(self, path: str | Path, key_range: int, extra: dict[str, Any]) -> None:
        """Write counters and candidates to HDF5 atomically (tmp, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        keys, est = self.top()
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = SKETCH_FORMAT
            f.attrs["version"] = SKETCH_VERSION
            f.attrs["range"] = key_range
            f.attrs["total"] = self.total
            f.attrs["updates"] = self.updates
            f.attrs["params"] = json.dumps(asdict(self.params))
            f.attrs["extra"] = json.dumps(extra)
            f.create_dataset("counters", data=self.counters.reshape(self.depth, self.width),
                             compression="gzip", compression_opts=1, shuffle=True)
            f.create_dataset("candidate_keys", data=keys)
            f.create_dataset("candidate_estimates", data=est)
            f.flush()
            os.fsync(f.id.get_vfd_handle())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> tuple[CountMinStore, dict[str, Any]]:
        """A saved server part and its attributes."""
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != SKETCH_FORMAT:
                    raise ValueError(f"{path}: not a {SKETCH_FORMAT} file")
                params = SketchParams(**json.loads(f.attrs["params"]))
                store = cls(params)
                store.counters[...] = f["counters"][...].reshape(-1)
                store.total = int(f.attrs["total"])
                store.updates = int(f.attrs["updates"])
                store.cand_keys = f["candidate_keys"][...]
                store.cand_est = f["candidate_estimates"][...]
                attrs = {"range": int(f.attrs["range"]),
                         **json.loads(f.attrs["extra"])}
        except OSError as e:
            raise ValueError(f"{path}: cannot read the saved sketch: {e}") from None
        return store, attrs


# ---- the sketch of a whole (finished) job -----------------------------------------------
INDEX_NAME = "index.json"


class SavedSketch:
    """Every key range's part of a finished job's sketch, queried as one sketch.

    ``DIR/sketch/index.json`` (written by the scheduler at the end) names one
    file per ring range; a key's estimate comes from its range's part, whichever
    server held it at the end (after a failover, the promoted replica).
    """

    def __init__(self, sketch_dir: str | Path):
        self.dir = Path(sketch_dir)
        index_path = self.dir / INDEX_NAME
        try:
            self.index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{index_path}: no saved sketch (the job has not finished)") \
                from None
        self.ring = KeyRing(self.index["servers"], self.index["virtual_servers"])
        files = self.index["files"]
        if len(files) != self.ring.num_ranges:
            raise ValueError(f"{index_path}: {len(files)} range files for a ring of "
                             f"{self.ring.num_ranges} ranges")
        self.parts = [CountMinStore.load(self.dir / name)[0] for name in files]
        self.total = sum(p.total for p in self.parts)

    def estimate(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64)
        out = np.zeros(keys.size, dtype=np.int64)
        ranges = np.searchsorted(self.ring.bounds, keys, side="right") - 1
        for r, part in enumerate(self.parts):  # a loop over ranges, not keys
            mine = ranges == r
            out[mine] = part.estimate(keys[mine])
        return out

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        tops = [p.top(k) for p in self.parts]
        return merge_top([t[0] for t in tops], [t[1] for t in tops], k)


def merge_top(keys: list[np.ndarray], estimates: list[np.ndarray], k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of several servers' (keys, estimates); servers hold
    disjoint key ranges, so there is nothing to add up."""
    allk = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    alle = np.concatenate(estimates) if estimates else np.empty(0, np.int64)
    order = np.lexsort((allk, -alle))[:k]
    return allk[order], alle[order]


# ---- ids back from keys ---------------------------------------------------------------------
_INV_M1 = np.uint64(pow(0xBF58476D1CE4E5B9, -1, 1 << 64))
_INV_M2 = np.uint64(pow(0x94D049BB133111EB, -1, 1 << 64))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _unxorshift(z: np.ndarray, s: int) -> np.ndarray:
    """Invert ``z ^= z >> s`` (a few rounds recover all 64 bits)."""
    out = z.copy()
    shift = s
    while shift < 64:
        out = z ^ (out >> np.uint64(s))
        shift += s
    return out


def unmix64(keys: np.ndarray) -> np.ndarray:
    """The inverse of :func:`mpips.keys.mix64`: the raw integer id of a key
    hashed with ``hash_feature(id)`` (salt 0). Heavy hitters are reported by id."""
    z = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _unxorshift(z, 31)
        z = z * _INV_M2
        z = _unxorshift(z, 27)
        z = z * _INV_M1
        z = _unxorshift(z, 30)
        return z - _GOLDEN
