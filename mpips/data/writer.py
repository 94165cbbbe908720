"""Writing HDF5 partitions in a stream, cut at a target size.

Rows arrive as :class:`Block` s; :class:`PartitionSink` appends them to
resizable HDF5 datasets, so memory holds one block, not one partition. Each
partition is written under a hidden temporary name and renamed when complete.
``data_tools convert`` and ``synth`` write through it, and so does
:func:`write_dataset` (a CSR matrix in memory: the scikit-learn estimator).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .format import FORMAT_NAME, FORMAT_VERSION, MANIFEST_FORMAT, Checksum, partition_name
from .manifest import write_manifest


@dataclass
class Block:
    """Parsed rows: CSR with uint64 keys; ``values is None`` means all ones."""

    labels: np.ndarray  # float32 (rows,)
    indptr: np.ndarray  # int64 (rows+1,), indptr[0] == 0
    indices: np.ndarray  # uint64 (nnz,)
    values: np.ndarray | None  # float32 (nnz,) or None

    @property
    def rows(self) -> int:
        return int(self.labels.size)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def slice(self, start: int, stop: int) -> Block:
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return Block(self.labels[start:stop], self.indptr[start:stop + 1] - lo,
                     self.indices[lo:hi], None if self.values is None else self.values[lo:hi])

    @staticmethod
    def from_dense(labels: np.ndarray, keys: np.ndarray, values: np.ndarray | None,
                   present: np.ndarray) -> Block:
        """Rows of fixed columns (``keys``/``values`` of shape rows x columns);
        ``present`` marks the entries that exist (row-major order is kept)."""
        counts = present.sum(axis=1, dtype=np.int64)
        indptr = np.zeros(labels.size + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        vals = None if values is None else values[present].astype(np.float32)
        return Block(labels.astype(np.float32), indptr, keys[present].astype(np.uint64), vals)


ROW_BYTES = 12  # indptr int64 + label float32
ONES_PIECE = 1 << 20  # hashing implicit ones of a late "values" array in pieces


@dataclass
class PartitionRecord:
    """What the manifest says about one partition."""

    name: str
    rows: int
    nnz: int
    positives: float
    has_values: bool
    sha256: str
    sources: list[str]
    first_row: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["label_rate"] = self.positives / self.rows if self.rows else 0.0
        return out


def _appendable(h5: h5py.File, name: str, dtype: Any, chunk: int, compression: str | None,
                initial: np.ndarray | None = None) -> h5py.Dataset:
    data = np.zeros(0, dtype) if initial is None else initial
    # fletcher32: HDF5 checks every chunk's checksum when it is read, so a
    # damaged partition fails naming the file instead of training on garbage
    return h5.create_dataset(name, data=data, maxshape=(None,), chunks=(chunk,),
                             compression=compression, fletcher32=True, track_times=False)


def _append(ds: h5py.Dataset, data: np.ndarray) -> None:
    old = ds.shape[0]
    ds.resize((old + data.size,))
    ds[old:] = data


class PartitionFile:
    """One partition being written; ``close`` renames it into place."""

    def __init__(self, folder: Path, name: str, hashing: dict[str, Any], sources: list[str],
                 compression: str | None = None):
        self.final = folder / name
        self.temp = folder / f".{name}.tmp"
        self.name, self.sources, self.compression = name, sources, compression
        self.h5 = h5py.File(self.temp, "w", track_order=True)
        self.h5.attrs["hashing"] = json.dumps(hashing, sort_keys=True)
        self.indptr = _appendable(self.h5, "indptr", np.int64, 1 << 16, compression,
                                  np.zeros(1, np.int64))
        self.indices = _appendable(self.h5, "indices", np.uint64, 1 << 17, compression)
        self.label = _appendable(self.h5, "label", np.float32, 1 << 16, compression)
        self.values: h5py.Dataset | None = None
        self.checksum = Checksum()
        self.checksum.update("indptr", np.zeros(1, np.int64))
        self.rows = self.nnz = 0
        self.positives = 0.0

    def append(self, block: Block) -> None:
        _append(self.indptr, block.indptr[1:] + self.nnz)
        self.checksum.update("indptr", block.indptr[1:] + self.nnz)
        _append(self.indices, block.indices)
        self.checksum.update("indices", block.indices)
        _append(self.label, block.labels)
        self.checksum.update("label", block.labels)
        if block.values is not None and self.values is None:
            self._start_values()
        if self.values is not None:
            values = block.values if block.values is not None else np.ones(block.nnz, np.float32)
            _append(self.values, values)
            self.checksum.update("values", values)
        self.rows += block.rows
        self.nnz += block.nnz
        self.positives += float(block.labels.sum(dtype=np.float64))

    def _start_values(self) -> None:
        """First non-binary value: the ones so far become explicit."""
        self.values = _appendable(self.h5, "values", np.float32, 1 << 17, self.compression,
                                  np.ones(self.nnz, np.float32))
        for start in range(0, self.nnz, ONES_PIECE):
            self.checksum.update("values", np.ones(min(ONES_PIECE, self.nnz - start)))

    @property
    def bytes(self) -> int:
        per_nnz = 8 if self.values is None else 12
        return self.rows * ROW_BYTES + self.nnz * per_nnz

    def close(self) -> PartitionRecord:
        digest = self.checksum.hexdigest()
        attrs = self.h5.attrs
        attrs["format"], attrs["version"] = FORMAT_NAME, FORMAT_VERSION
        attrs["rows"], attrs["nnz"] = self.rows, self.nnz
        attrs["sources"] = json.dumps(self.sources)
        attrs["sha256"] = digest
        self.h5.close()
        os.replace(self.temp, self.final)
        return PartitionRecord(self.name, self.rows, self.nnz, self.positives,
                               self.values is not None, digest, self.sources)

    def abort(self) -> None:
        try:
            self.h5.close()
        finally:
            self.temp.unlink(missing_ok=True)


class PartitionSink:
    """Cuts the rows of one input (file or generator shard) into partitions.

    A partition closes when it reaches ``target_rows`` rows or about
    ``target_bytes`` bytes of arrays. Names are ``part-<source>-<seq>.h5``.
    """

    def __init__(self, folder: str | Path, source_index: int, sources: list[str],
                 hashing: dict[str, Any], target_rows: int, target_bytes: int,
                 compression: str | None = None):
        self.folder = Path(folder)
        self.source_index, self.sources, self.hashing = source_index, sources, hashing
        self.target_rows, self.target_bytes = target_rows, target_bytes
        self.compression = compression
        self.current: PartitionFile | None = None
        self.records: list[PartitionRecord] = []

    def write(self, block: Block) -> None:
        while block.rows:
            part = self.current or self._open()
            take = self._rows_that_fit(part, block)
            if take == 0:  # full: close it, the rows go to the next one
                self.records.append(part.close())
                self.current = None
                continue
            part.append(block.slice(0, take) if take < block.rows else block)
            block = block.slice(take, block.rows)
            if part.rows >= self.target_rows or part.bytes >= self.target_bytes:
                self.records.append(part.close())
                self.current = None

    def _rows_that_fit(self, part: PartitionFile, block: Block) -> int:
        per_nnz = 12 if (part.values is not None or block.values is not None) else 8
        room_bytes = self.target_bytes - part.bytes
        cost = np.arange(1, block.rows + 1) * ROW_BYTES + block.indptr[1:] * per_nnz
        fit = int(np.searchsorted(cost, room_bytes, side="right"))
        fit = min(fit, self.target_rows - part.rows)
        return fit if part.rows else max(fit, 1)  # a partition holds at least one row

    def _open(self) -> PartitionFile:
        name = partition_name(self.source_index, len(self.records))
        self.current = PartitionFile(self.folder, name, self.hashing, self.sources,
                                     self.compression)
        return self.current

    def finish(self) -> list[PartitionRecord]:
        if self.current is not None and self.current.rows:
            self.records.append(self.current.close())
        elif self.current is not None:
            self.current.abort()
        self.current = None
        return self.records

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None
        for record in self.records:
            (self.folder / record.name).unlink(missing_ok=True)


def dataset_manifest(results: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a data set from its writers' ``{"records": [...]}``
    (partition records as dicts, any order: sorted by name, which is data order)."""
    parts = sorted((r for res in results for r in res["records"]), key=lambda r: r["name"])
    first_row = 0
    for part in parts:
        part["first_row"] = first_row
        first_row += part["rows"]
    rows = sum(p["rows"] for p in parts)
    positives = sum(p["positives"] for p in parts)
    return {
        "format": MANIFEST_FORMAT, "version": FORMAT_VERSION, **meta,
        "rows": rows, "nnz": sum(p["nnz"] for p in parts),
        "positives": positives, "label_rate": positives / rows if rows else 0.0,
        "skipped_lines": sum(r.get("skipped", 0) for r in results),
        "partitions": parts,
    }


def write_dataset(folder: str | Path, block: Block, hashing: dict[str, Any],
                  rows_per_partition: int, created_by: str, labels: str = "binary"
                  ) -> dict[str, Any]:
    """Write the rows of ``block`` as a data set in ``folder`` (new or empty):
    partitions of ``rows_per_partition`` rows and the manifest. Returns the
    manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sink = PartitionSink(folder, 0, [created_by], hashing, rows_per_partition, 1 << 62)
    try:
        sink.write(block)
        records = sink.finish()
    except BaseException:
        sink.abort()
        raise
    manifest = dataset_manifest([{"records": [r.as_dict() for r in records]}],
                                {"created_by": created_by, "labels": labels,
                                 "hashing": hashing})
    write_manifest(folder, manifest)
    return manifest
