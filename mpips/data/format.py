"""The on-disk format of a converted data set (shared by data_tools and readers).

A data set is a directory holding ``manifest.json`` and HDF5 partitions
``part-FFFFF-SSSS.h5`` (F: index of the input file or generator shard in
sorted input order, S: sequence number of the partition cut from it). The
name order is the data order, so conversions with any number of MPI ranks give
the same partitions. Each partition holds one CSR block:

- ``indptr``  int64, rows+1 entries, starting at 0;
- ``indices`` uint64 feature keys (see ``hashing`` in the attributes);
- ``values``  float32, absent when every value is 1 (binary features);
- ``label``   float32, 0/1 for binary labels.

Attributes: ``format`` (= ``FORMAT_NAME``), ``version``, ``rows``, ``nnz``,
``hashing`` and ``sources`` (JSON text), ``sha256`` (see :class:`Checksum`).
"""

from __future__ import annotations

import hashlib

import numpy as np

FORMAT_NAME = "mpips-csr"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mpips-partitions"
ARRAYS = ("indptr", "indices", "values", "label")
DTYPES = {"indptr": np.dtype(np.int64), "indices": np.dtype(np.uint64),
          "values": np.dtype(np.float32), "label": np.dtype(np.float32)}


def partition_name(source_index: int, sequence: int) -> str:
    return f"part-{source_index:05d}-{sequence:04d}.h5"


class Checksum:
    """SHA-256 over a partition's arrays, independent of HDF5 storage details.

    Each array is hashed on its own (little-endian bytes, in row order, fed in
    any number of pieces); the checksum is the SHA-256 of the text
    ``"indptr:<hex>\\nindices:<hex>\\n..."`` over the arrays present. So it can
    be computed while streaming and checked later without the writer's chunking.
    """

    def __init__(self) -> None:
        self._parts = {name: hashlib.sha256() for name in ARRAYS}
        self._seen: set[str] = set()

    def update(self, name: str, array: np.ndarray) -> None:
        self._seen.add(name)
        data = np.ascontiguousarray(array, dtype=DTYPES[name].newbyteorder("<"))
        self._parts[name].update(memoryview(data).cast("B"))

    def hexdigest(self) -> str:
        text = "".join(f"{name}:{self._parts[name].hexdigest()}\n"
                       for name in ARRAYS if name in self._seen)
        return hashlib.sha256(text.encode()).hexdigest()
