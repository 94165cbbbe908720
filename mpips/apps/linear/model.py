"""The numerics of sparse linear models, shared by training, evaluation,
``predict`` and the tests: losses, minibatch design matrices, metrics and the
model file. numpy only (a worker starts without scipy); no kv, no MPI.

Labels are 0/1. A *margin* is ``x . w`` (plus the bias weight); the logistic
loss reads it as a log-odds, the squared and hinge losses as a score for the
target ``s = 2y - 1`` in {-1, +1}. Every loss predicts class 1 when the margin
is >= 0, so accuracy and AUC (a ranking of margins) mean the same for all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...data import localise
from ...data.reader import Minibatch, PartitionReader
from ...keys import hash_feature
from ...kv.keyset import KeySubset

MODEL_FORMAT = "mpips-linear-model"
# The key of the intercept: a fixed key no data set uses by accident (a
# feature id hashed with a salt of its own). Part of the model format.
BIAS_KEY = np.uint64(hash_feature(np.array([0], np.uint64), 0xB1A5)[0])
LOSSES = ("logistic", "squared", "hinge")


# ---- losses ---------------------------------------------------------------------------
def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def logloss_terms(margin: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log(1 + exp(-s m)) per row, s = 2y - 1, computed stably."""
    return np.logaddexp(0.0, -(2.0 * y - 1.0) * margin)


def loss_terms(loss: str, margin: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The loss of each row."""
    if loss == "logistic":
        return logloss_terms(margin, y)
    s = 2.0 * y - 1.0
    if loss == "squared":
        return 0.5 * (margin - s) ** 2
    if loss == "hinge":
        return np.maximum(0.0, 1.0 - s * margin)
    raise ValueError(f"unknown loss {loss!r} (one of {', '.join(LOSSES)})")


def loss_derivative(loss: str, margin: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d loss / d margin per row (a subgradient for the hinge)."""
    if loss == "logistic":
        return sigmoid(margin) - y
    s = 2.0 * y - 1.0
    if loss == "squared":
        return margin - s
    if loss == "hinge":
        return np.where(s * margin < 1.0, -s, 0.0)
    raise ValueError(f"unknown loss {loss!r} (one of {', '.join(LOSSES)})")


def gradient(loss: str, X: SparseRows, y: np.ndarray, w: np.ndarray, l2: float = 0.0,
             l2_mask: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """Gradient of the mean loss over the rows plus ``l2/2 |w|^2`` (on the
    columns ``l2_mask`` selects, default all); returns (gradient, loss sum, margins)."""
    margin = X @ w
    grad = X.rmatvec(loss_derivative(loss, margin, y)) / max(1, X.shape[0])
    if l2:
        grad += l2 * (w if l2_mask is None else w * l2_mask)
    return grad, float(loss_terms(loss, margin, y).sum()), margin


class SparseRows:
    """A minibatch's rows in CSR form (``indptr``, int32 ``indices``, float64
    ``data``, or None where every entry is 1) with the two products training
    and scoring take: ``X @ w`` (a margin per row) and ``X.rmatvec(r)``
    (``X.T @ r``). numpy only: importing scipy.sparse holds a worker up before
    MPI_Init, where every rank waits for it, and its products save nothing
    on rows this short (docs/performance.md, "a worker without scipy")."""

    __slots__ = ("data", "indices", "indptr", "shape", "_counts", "_starts", "_filled")

    def __init__(self, data: np.ndarray | None, indices: np.ndarray, indptr: np.ndarray,
                 shape: tuple[int, int]) -> None:
        indptr = np.asarray(indptr)
        if indptr.dtype.kind != "i":  # unsigned offsets: numpy's repeat and reduceat refuse them
            indptr = indptr.astype(np.int64)
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape = (int(shape[0]), int(shape[1]))
        self._counts = np.diff(indptr)  # entries per row
        filled = self._counts > 0
        # np.add.reduceat needs the starts of non-empty rows
        self._filled = None if filled.all() else filled
        self._starts = indptr[:-1] if self._filled is None else indptr[:-1][filled]

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @property
    def nbytes(self) -> int:
        extra = 0 if self._filled is None else self._filled.nbytes + self._starts.nbytes
        return int((0 if self.data is None else self.data.nbytes) + self.indices.nbytes
                   + self.indptr.nbytes + self._counts.nbytes + extra)

    def __matmul__(self, w: np.ndarray) -> np.ndarray:
        prod = w[self.indices]
        if self.data is not None:
            prod *= self.data
        out = np.zeros(self.shape[0])
        if self._starts.size:
            sums = np.add.reduceat(prod, self._starts)
            if self._filled is None:
                return sums
            out[self._filled] = sums
        return out

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """``X.T @ r``: per column, the sum of its entries times their rows' ``r``."""
        per_entry = np.repeat(r, self._counts)
        if self.data is not None:
            per_entry *= self.data
        out = np.bincount(self.indices, weights=per_entry, minlength=self.shape[1])
        return out.astype(np.float64, copy=False)  # bincount of nothing gives int zeros

    def toarray(self) -> np.ndarray:
        dense = np.zeros(self.shape)
        rows = np.repeat(np.arange(self.shape[0]), self._counts)
        np.add.at(dense, (rows, self.indices), 1.0 if self.data is None else self.data)
        return dense


# ---- minibatches ------------------------------------------------------------------------
@dataclass
class Batch:
    """A localised minibatch: sorted unique ``keys`` and ``X`` whose column j is
    key ``keys[j]``; ``bias`` is the column of :data:`BIAS_KEY` or -1."""

    keys: np.ndarray
    X: SparseRows
    y: np.ndarray
    bias: int = -1
    # the keys as positions into their partition's registered key set (set
    # before the partition's first minibatch with [linear] key_sets): what
    # its requests send
    by_position: KeySubset | None = None

    @property
    def rows(self) -> int:
        return int(self.y.size)


def make_batch(indptr: np.ndarray, keys: np.ndarray, values: np.ndarray | None,
               labels: np.ndarray, bias: bool) -> Batch:
    """Localise CSR rows with global keys; with ``bias`` every row gets a 1 in
    the column of :data:`BIAS_KEY` (one more entry at the end of each row)."""
    rows = labels.size
    uniq, cols = localise(keys)
    y = labels.astype(np.float64)
    data = None if values is None else values.astype(np.float64)  # None: every entry is 1
    if not bias:
        return Batch(uniq, SparseRows(data, cols, indptr, (rows, uniq.size)), y)
    at = int(np.searchsorted(uniq, BIAS_KEY))
    if at < uniq.size and uniq[at] == BIAS_KEY:
        ncols = uniq.size  # a data key equal to the bias key: share the column
    else:
        uniq = np.insert(uniq, at, BIAS_KEY)
        cols = cols + (cols >= at).astype(cols.dtype)
        ncols = uniq.size
    # Row r's entries move down by r (the bias entries of rows before it).
    new_indptr = indptr + np.arange(rows + 1, dtype=indptr.dtype)
    bias_slots = new_indptr[1:] - 1
    is_data = np.ones(new_indptr[-1], bool)
    is_data[bias_slots] = False
    new_cols = np.empty(new_indptr[-1], cols.dtype)
    new_cols[is_data] = cols
    new_cols[bias_slots] = at
    new_data = None
    if data is not None:
        new_data = np.ones(new_indptr[-1])
        new_data[is_data] = data
    X = SparseRows(new_data, new_cols, new_indptr, (rows, ncols))
    return Batch(uniq, X, y, at)


def localised_bytes(rows: int, nnz: int, has_values: bool, bias: bool) -> int:
    """At most what :func:`batch_bytes` sums over the minibatches of ``rows``
    rows with ``nnz`` entries (every key distinct, the bias on every row)."""
    entries = nnz + (rows if bias else 0)
    # per entry: its column (4), value (8), key (8) and key-set position (4);
    # per row: label, offset and length (8 each)
    return entries * (16 + (8 if has_values else 0)) + rows * 24


def batch_bytes(batch: Batch) -> int:
    """Memory a localised minibatch holds (with the positions of its keys
    in its partition's key set, which come later: 4 bytes a key)."""
    return int(batch.keys.nbytes + batch.y.nbytes + batch.X.nbytes + 4 * batch.keys.size)


class BatchCache:
    """Localised minibatches a worker keeps to train or score on again,
    within one byte budget (``[linear] cache_bytes``) shared by its training
    partitions and its test share; a set is kept whole or not at all."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self._kept: dict[Hashable, tuple[list[Any], int]] = {}

    def get(self, name: Hashable) -> list[Any] | None:
        kept = self._kept.get(name)
        return None if kept is None else kept[0]

    def fill(self, name: Hashable, items: Iterable[Any], want: bool = True,
             size: Callable[[Any], int] = batch_bytes) -> Iterator[Any]:
        """Yield ``items``; once all are through, keep them under ``name``
        if ``want`` and they fit in what is left of the budget."""
        keep: list[Any] | None = [] if want else None
        total = 0
        for item in items:
            if keep is not None:
                total += size(item)
                if self.used + total <= self.budget:
                    keep.append(item)
                else:
                    keep = None  # over budget: read again next time
            yield item
        if keep is not None:
            self._kept[name] = (keep, total)
            self.used += total

    def drop(self, name: Hashable) -> None:
        kept = self._kept.pop(name, None)
        if kept is not None:
            self.used -= kept[1]


def batch_of(mb: Minibatch, bias: bool) -> Batch:
    return make_batch(mb.indptr, mb.keys, mb.values, mb.labels, bias)


def share_of_rows(rows: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous share ``index`` of ``count`` of ``range(rows)``."""
    return rows * index // count, rows * (index + 1) // count


def read_share(path: str, index: int, count: int, batch_rows: int,
               chunk_rows: int) -> Iterator[Minibatch]:
    """Minibatches of this share of one partition's rows (for evaluation)."""
    with PartitionReader(path, chunk_rows) as reader:
        lo, hi = share_of_rows(reader.rows, index, count)
        step = max(1, min(batch_rows, chunk_rows))
        for start in range(lo, hi, step):
            yield reader.read(start, min(start + step, hi))


# ---- metrics -------------------------------------------------------------------------------
def auc_exact(margin: np.ndarray, y: np.ndarray) -> float:
    """P(margin_pos > margin_neg), ties counting half (Mann-Whitney with mid-ranks)."""
    pos = y > 0.5
    npos, nneg = int(pos.sum()), int(y.size - pos.sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(margin, kind="stable")
    sorted_m = margin[order]
    # Mid-ranks of tied runs: the mean of each run's first and last position.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_m)) + 1]
    ends = np.r_[starts[1:], sorted_m.size]
    run_rank = 0.5 * (starts + ends - 1) + 1.0
    ranks = np.empty(margin.size)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[pos].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def margin_bins(margin: np.ndarray, bins: int, span: float) -> np.ndarray:
    """Histogram bin of each margin: ``bins`` even bins over [-span, span]
    (margins beyond fall in the end bins)."""
    scaled = (np.clip(margin, -span, span) + span) * (bins / (2.0 * span))
    return np.minimum(scaled.astype(np.int64), bins - 1)


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """AUC from margin histograms (ties within a bin count half) and the most
    that binning can have moved it: half the share of pos-neg pairs sharing a bin."""
    npos, nneg = float(pos.sum()), float(neg.sum())
    if npos == 0 or nneg == 0:
        return float("nan"), 0.0
    neg_below = np.cumsum(neg) - neg
    auc = float((pos * (neg_below + 0.5 * neg)).sum() / (npos * nneg))
    return auc, float(0.5 * (pos * neg).sum() / (npos * nneg))


def metrics_of(margin: np.ndarray, y: np.ndarray, loss: str) -> dict[str, Any]:
    """Test metrics of margins on one node (exact AUC)."""
    n = int(y.size)
    out: dict[str, Any] = {"rows": n, "positives": int((y > 0.5).sum())}
    if n:
        out["logloss"] = float(logloss_terms(margin, y).mean()) if loss == "logistic" \
            else None
        out["loss"] = float(loss_terms(loss, margin, y).mean())
        out["accuracy"] = float(((margin >= 0) == (y > 0.5)).mean())
        out["auc"] = auc_exact(margin, y)
    return out


# ---- the model file ---------------------------------------------------------------------------
def _header(h5: h5py.File, attrs: dict[str, Any] | None) -> None:
    """A model file's attributes: format, version, the bias key, and the
    caller's (``config`` and other non-scalars as JSON text)."""
    h5.attrs["format"] = MODEL_FORMAT
    h5.attrs["version"] = 1
    h5.attrs["bias_key"] = int(BIAS_KEY)
    for k, v in (attrs or {}).items():
        h5.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)


def write_model(path: str | Path, keys: np.ndarray, weights: np.ndarray,
                state: dict[str, np.ndarray] | None = None,
                attrs: dict[str, Any] | None = None) -> None:
    """One HDF5 file: sorted ``keys``, ``weights``, optional optimizer ``state/*``
    arrays, and attributes (``config`` as JSON text, ``loss``, ``bias_key``).
    Written to a temporary name and renamed, so a reader never sees half a model."""
    path = Path(path)
    order = np.argsort(keys, kind="stable")
    temp = path.with_name(f".{path.name}.tmp")
    with h5py.File(temp, "w") as h5:
        _header(h5, attrs)
        h5.create_dataset("keys", data=keys[order].astype(np.uint64), track_times=False)
        h5.create_dataset("weights", data=weights.reshape(-1)[order], track_times=False)
        for name, arr in (state or {}).items():
            h5.create_dataset(f"state/{name}", data=arr.reshape(-1)[order], track_times=False)
    temp.replace(path)


COPY_ROWS = 1 << 22  # rows per slice when model.h5 is assembled from shards


def _model_datasets(first: h5py.File | None) -> list[str]:
    names = ["keys", "weights"]
    if first is not None and "state" in first:
        names += [f"state/{n}" for n in first["state"]]
    return names


def link_model(path: str | Path, pieces: list[tuple[str, int, int]],
               attrs: dict[str, Any] | None = None) -> None:
    """A model file whose datasets are HDF5 virtual datasets over slices of
    the shard files (``(file, start, count)``, keys in order): it reads as
    :func:`write_model`'s file for their concatenation, and nothing is
    copied, whatever the model's size. The shards are named relative to the
    model's folder, so the folder may move as a whole (not the file alone)."""
    path = Path(path)
    total = sum(count for _, _, count in pieces)
    temp = path.with_name(f".{path.name}.tmp")
    files = list(dict.fromkeys(f for f, _, _ in pieces))
    shapes: dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]] = {}
    for f in files:
        with h5py.File(f, "r") as src:
            shapes[f] = {n: (src[n].shape, src[n].dtype) for n in _model_datasets(src)}
    names = list(shapes[files[0]]) if files else ["keys", "weights"]
    layouts = {n: h5py.VirtualLayout(shape=(total,), dtype=shapes[files[0]][n][1] if files
                                     else (np.uint64 if n == "keys" else np.float64))
               for n in names}
    at = 0
    for f, start, count in pieces:
        rel = os.path.relpath(f, path.parent)
        for n in names:
            source = h5py.VirtualSource(rel, n, shape=shapes[f][n][0])
            layouts[n][at:at + count] = source[start:start + count]
        at += count
    with h5py.File(temp, "w") as h5:
        _header(h5, attrs)
        for n in names:
            h5.create_virtual_dataset(n, layouts[n])
    temp.replace(path)


def copy_model(path: str | Path, pieces: list[tuple[str, int, int]],
               attrs: dict[str, Any] | None = None) -> None:
    """A model file from slices of model files (``(file, start, count)``,
    whose keys follow each other in order): what :func:`write_model` would
    write for their concatenation, copied COPY_ROWS rows at a time."""
    path = Path(path)
    total = sum(count for _, _, count in pieces)
    temp = path.with_name(f".{path.name}.tmp")
    sources = {f: h5py.File(f, "r") for f in dict.fromkeys(f for f, _, _ in pieces)}
    try:
        first = next(iter(sources.values()), None)
        names = _model_datasets(first)
        with h5py.File(temp, "w") as h5:
            _header(h5, attrs)
            out = {n: h5.create_dataset(n, shape=(total,), track_times=False,
                                        dtype=first[n].dtype if first is not None else
                                        (np.uint64 if n == "keys" else np.float64))
                   for n in names}
            at = 0
            for f, start, count in pieces:
                for a in range(start, start + count, COPY_ROWS):
                    b = min(start + count, a + COPY_ROWS)
                    for n in names:
                        out[n][at:at + b - a] = sources[f][n][a:b]
                    at += b - a
    finally:
        for src in sources.values():
            src.close()
    temp.replace(path)


@dataclass
class Model:
    keys: np.ndarray  # sorted uint64
    weights: np.ndarray  # float64
    attrs: dict[str, Any]
    state: dict[str, np.ndarray]

    @property
    def loss(self) -> str:
        return str(self.attrs.get("loss", "logistic"))

    @property
    def bias(self) -> float:
        at = np.searchsorted(self.keys, BIAS_KEY)
        return float(self.weights[at]) if at < self.keys.size and \
            self.keys[at] == BIAS_KEY else 0.0

    def margins(self, indptr: np.ndarray, keys: np.ndarray,
                values: np.ndarray | None) -> np.ndarray:
        """Margins of CSR rows: a weight lookup per nonzero (keys the model has
        never seen weigh 0), summed per row."""
        at = np.minimum(np.searchsorted(self.keys, keys), max(0, self.keys.size - 1))
        w = np.where(self.keys[at] == keys, self.weights[at], 0.0) if self.keys.size \
            else np.zeros(keys.size)
        if values is not None:
            w = w * values
        sums = np.add.reduceat(np.r_[w, 0.0], indptr[:-1]) if keys.size else \
            np.zeros(indptr.size - 1)
        sums[np.diff(indptr) == 0] = 0.0  # reduceat gives the next value for empty rows
        return sums + self.bias


def read_model(path: str | Path) -> Model:
    """Read a model file written by :func:`write_model`; errors name the file."""
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise ValueError(f"{path}: model file not found") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    with h5:
        if h5.attrs.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: not an mpips linear model "
                             f"(format={h5.attrs.get('format')!r})")
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()}
        state = {k: h5["state"][k][:] for k in h5["state"]} if "state" in h5 else {}
        return Model(h5["keys"][:], h5["weights"][:].astype(np.float64), attrs, state)
