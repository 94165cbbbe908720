"""Streaming minibatches out of one HDF5 partition.

A :class:`PartitionReader` reads ``chunk_rows`` rows at a time (one HDF5 read
per array) and cuts minibatches out of the chunk as views, so memory holds one
chunk whatever the partition size, and per-minibatch cost is a few slices.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from mpips.data import storage
from mpips.data.format import FORMAT_NAME, FORMAT_VERSION
from mpips.data.localise import localise

# scipy.sparse is imported where a matrix is made, so that the ranks that
# never make one (the scheduler, the servers) start without importing it.
if TYPE_CHECKING:
    import scipy.sparse as sp

DEFAULT_CHUNK_ROWS = 65_536


class PartitionError(ValueError):
    """A partition file that cannot be read; the message names the file."""


@dataclass
class Minibatch:
    """Rows of a partition: labels and CSR with uint64 keys.

    ``keys`` holds one global key per nonzero (the CSR column "indices");
    ``values is None`` means every value is 1. ``first_row`` is the index of
    the first row inside its partition.
    """

    labels: np.ndarray  # float32 (rows,)
    indptr: np.ndarray  # int64 (rows+1,), indptr[0] == 0
    keys: np.ndarray  # uint64 (nnz,)
    values: np.ndarray | None  # float32 (nnz,) or None
    first_row: int = 0

    @property
    def rows(self) -> int:
        return int(self.labels.size)

    @property
    def nnz(self) -> int:
        return int(self.keys.size)

    def slice(self, start: int, stop: int) -> Minibatch:
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return Minibatch(self.labels[start:stop], self.indptr[start:stop + 1] - lo,
                         self.keys[lo:hi], None if self.values is None else self.values[lo:hi],
                         self.first_row + start)

    def localised(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """``(unique_keys, X)``: sorted unique keys and a CSR matrix whose column
        ``j`` is key ``unique_keys[j]`` (the shape a kv pull/push wants)."""
        import scipy.sparse as sp
        unique_keys, columns = localise(self.keys)
        values = self.values if self.values is not None else np.ones(self.nnz, np.float32)
        matrix = sp.csr_matrix((values, columns, self.indptr),
                               shape=(self.rows, unique_keys.size))
        return unique_keys, matrix


def _open(path: str | Path) -> h5py.File:
    try:
        if storage.is_url(str(path)):  # HDF5 reads it through a file object, in ranges
            h5 = h5py.File(storage.open_binary(str(path)), "r")
        else:
            h5 = h5py.File(storage.local(path), "r")
    except FileNotFoundError:
        raise PartitionError(f"{path}: partition file not found") from None
    except OSError as e:
        raise PartitionError(f"{path}: not a readable HDF5 file ({e})") from None
    fmt, version = h5.attrs.get("format"), h5.attrs.get("version")
    if fmt != FORMAT_NAME or version is None or int(version) > FORMAT_VERSION:
        h5.close()
        raise PartitionError(f"{path}: not an mpips partition of version <= {FORMAT_VERSION} "
                             f"(format={fmt!r}, version={version!r})")
    for name in ("indptr", "indices", "label"):
        if name not in h5:
            h5.close()
            raise PartitionError(f"{path}: missing array {name!r}")
    return h5


class PartitionReader:
    """Reads one partition in chunks of rows; a context manager."""

    def __init__(self, path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 expected: Any = None):
        """``expected``: the manifest's entry of this partition
        (:class:`~mpips.data.manifest.PartitionInfo`); its rows, nonzeros and
        values must be what the file holds, or PartitionError names the file."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.path = str(path)
        self.chunk_rows = chunk_rows
        self._h5 = _open(path)
        self.rows = int(self._h5["label"].shape[0])
        self.nnz = int(self._h5["indices"].shape[0])
        self.has_values = "values" in self._h5
        if self._h5["indptr"].shape[0] != self.rows + 1:
            self._h5.close()
            raise PartitionError(f"{path}: indptr has {self._h5['indptr'].shape[0]} entries "
                                 f"for {self.rows} rows")
        if expected is not None and (expected.rows, expected.nnz, expected.has_values) != \
                (self.rows, self.nnz, self.has_values):
            self._h5.close()
            raise PartitionError(
                f"{path}: holds {self.rows} rows, {self.nnz} nonzeros"
                f"{'' if self.has_values else ', no values'}; the manifest says "
                f"{expected.rows} rows, {expected.nnz} nonzeros"
                f"{'' if expected.has_values else ', no values'} (replaced or damaged: "
                "python -m data_tools verify)")

    @property
    def attrs(self) -> dict[str, Any]:
        out = dict(self._h5.attrs)
        for key in ("hashing", "sources"):
            if key in out:
                out[key] = json.loads(out[key])
        return out

    @property
    def array_names(self) -> list[str]:
        return list(self._h5.keys())

    def indptr_at(self, row: int) -> int:
        """The stored ``indptr[row]`` (reads one number)."""
        return int(self._h5["indptr"][row])

    def read_values(self, start: int, stop: int) -> np.ndarray | None:
        """The stored values of rows ``[start, stop)`` alone (None where every
        value is 1): one read of two indptr entries and one of the values."""
        if not self.has_values:
            return None
        stop = min(stop, self.rows)
        start = min(max(0, start), stop)
        lo, hi = self.indptr_at(start), self.indptr_at(stop)
        if not 0 <= lo <= hi <= self.nnz:
            raise PartitionError(f"{self.path}: corrupt rows {start}..{stop}: indptr runs "
                                 f"{lo}..{hi} of {self.nnz} values "
                                 "(python -m data_tools verify tells more)")
        try:
            return self._h5["values"][lo:hi]
        except (OSError, KeyError) as e:
            raise PartitionError(f"{self.path}: cannot read rows {start}..{stop}: {e}") from None

    def read(self, start: int, stop: int) -> Minibatch:
        """Rows ``[start, stop)`` in one read per array."""
        start, stop = max(0, start), min(stop, self.rows)
        try:
            indptr = self._h5["indptr"][start:stop + 1]
            lo, hi = int(indptr[0]), int(indptr[-1])
            keys = self._h5["indices"][lo:hi]
            values = self._h5["values"][lo:hi] if self.has_values else None
            labels = self._h5["label"][start:stop]
        except (OSError, KeyError) as e:
            raise PartitionError(f"{self.path}: cannot read rows {start}..{stop}: {e}") from None
        if not 0 <= lo <= hi <= self.nnz or (np.diff(indptr) < 0).any() \
                or keys.size != hi - lo or labels.size != stop - start:
            raise PartitionError(f"{self.path}: corrupt rows {start}..{stop}: indptr runs "
                                 f"{lo}..{hi} of {self.nnz} indices or decreases "
                                 "(python -m data_tools verify tells more)")
        if lo:
            indptr -= lo
        return Minibatch(labels, indptr, keys, values, start)

    def chunks(self) -> Iterator[Minibatch]:
        for start in range(0, self.rows, self.chunk_rows):
            yield self.read(start, start + self.chunk_rows)

    def minibatches(self, batch_rows: int) -> Iterator[Minibatch]:
        """Minibatches of ``batch_rows`` rows (the last may be shorter); a
        minibatch never straddles two chunks, so chunk_rows should be a multiple."""
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        for chunk in self.chunks():
            for start in range(0, chunk.rows, batch_rows):
                yield chunk.slice(start, min(start + batch_rows, chunk.rows))

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> PartitionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_minibatches(paths: list[str], batch_rows: int,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS,
                     expected: list[Any] | None = None) -> Iterator[Minibatch]:
    """Minibatches of several partitions in turn (one open file at a time);
    ``expected``: their manifest entries, checked as each opens."""
    for i, path in enumerate(paths):
        with PartitionReader(path, chunk_rows, expected[i] if expected else None) as reader:
            yield from reader.minibatches(batch_rows)
