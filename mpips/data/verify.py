"""The full check of a converted partition against its manifest entry: the
one ``data_tools verify`` runs, and jobs with ``[data] verify = "sha256"``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .format import ARRAYS, Checksum
from .reader import PartitionError, PartitionReader


def check_partition(path: str, expected: Any, binary: bool) -> list[str]:
    """Problems of one partition against its manifest entry (rows, nnz, indptr,
    labels, values, the SHA-256 of its arrays); [] when it is sound."""
    problems: list[str] = []
    try:
        reader = PartitionReader(path)
    except PartitionError as e:
        return [str(e)]
    with reader:
        if reader.rows != expected.rows or reader.nnz != expected.nnz:
            problems.append(f"{path}: {reader.rows} rows / {reader.nnz} nnz, manifest says "
                            f"{expected.rows} / {expected.nnz}")
        checksum = Checksum()
        checksum.update("indptr", np.zeros(1, np.int64))
        previous_end = 0
        try:
            for chunk in reader.chunks():
                ends = chunk.indptr[1:] + previous_end
                if chunk.first_row == 0 and reader.indptr_at(0) != 0:
                    problems.append(f"{path}: indptr does not start at 0")
                if (np.diff(chunk.indptr) < 0).any():
                    problems.append(f"{path}: indptr decreases near row {chunk.first_row}")
                if not np.isfinite(chunk.labels).all() or (
                        binary and not np.isin(chunk.labels, (0.0, 1.0)).all()):
                    problems.append(f"{path}: bad labels near row {chunk.first_row}")
                if chunk.values is not None and not np.isfinite(chunk.values).all():
                    problems.append(f"{path}: non-finite values near row {chunk.first_row}")
                previous_end = int(ends[-1]) if ends.size else previous_end
                checksum.update("indptr", ends)
                checksum.update("indices", chunk.keys)
                checksum.update("label", chunk.labels)
                if chunk.values is not None:
                    checksum.update("values", chunk.values)
                if problems:
                    break
        except (PartitionError, OSError) as e:
            return problems + [f"{path}: unreadable: {e}"]
        if not problems and previous_end != reader.nnz:
            problems.append(f"{path}: indptr ends at {previous_end}, {reader.nnz} indices")
        digest = checksum.hexdigest()
        if not problems and digest != expected.sha256:
            problems.append(f"{path}: checksum mismatch (data changed or corrupt)")
        extra = set(reader.array_names) - set(ARRAYS)
        if extra:
            problems.append(f"{path}: unexpected arrays {sorted(extra)}")
    return problems
