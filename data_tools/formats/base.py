"""What an input format provides, and the registry of formats.

A format turns one input file into a stream of :class:`Block` (parsed rows in
CSR form). Text formats subclass :class:`TextFormat` and implement two
parsers: a vectorised ``parse_fast`` over a whole chunk that gives up (returns
``None``) at the first doubt, and a per-line ``parse_line`` that is the
authority on what is valid and says what is wrong. The per-line parser only
runs on chunks the fast one rejected, so clean input never pays for it.

To add a format: subclass, set ``name``, decorate with ``@register``, and
import the module in ``formats/__init__.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from data_tools.errors import BadLine, DataError
from data_tools.sources import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    TextChunk,
    read_chunks,
)
from mpips.data.writer import Block  # the rows formats yield, as the writer takes them

FORMATS: dict[str, type[InputFormat]] = {}


def register(cls: type[InputFormat]) -> type[InputFormat]:
    FORMATS[cls.name] = cls
    return cls


@dataclass
class ConvertOptions:
    """Settings shared by all formats (the ``convert`` command line)."""

    labels: str = "binary"  # "binary": -1/0/+1 stored as 0/1; "real": any finite number
    keep_ids: bool = False  # integer feature ids are the keys, unhashed
    salt: int = 0  # namespace salt for libsvm ids
    skip_bad: int = 0  # bad lines that may be skipped (per rank; the total is checked)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    label_column: str | None = None
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    criteo_ints: int = 13
    criteo_cats: int = 26
    delimiter: str = ","


class BadLineBudget:
    """Counts skipped bad lines and raises once more than ``limit`` are seen."""

    def __init__(self, limit: int):
        self.limit = limit
        self.skipped = 0
        self.examples: list[str] = []

    def skip(self, error: BadLine) -> None:
        if self.skipped >= self.limit:
            if self.limit:
                raise DataError(f"{error} (more than --skip-bad {self.limit} bad lines)")
            raise error
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))
            print(f"data_tools: skipped {error}", file=sys.stderr)


class InputFormat:
    """Base of all formats: ``blocks(path)`` yields the parsed rows of one file."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def __init__(self, options: ConvertOptions, budget: BadLineBudget):
        self.options = options
        self.budget = budget

    def blocks(self, path: str) -> Iterator[Block]:
        raise NotImplementedError

    def hashing(self) -> dict[str, Any]:
        """How keys were made, recorded in every partition and the manifest."""
        raise NotImplementedError

    def check_labels(self, labels: np.ndarray) -> np.ndarray | None:
        """Labels as stored (0/1 for binary), or None if one is not allowed."""
        if not np.isfinite(labels).all() or (np.abs(labels) > FLOAT32_MAX).any():
            return None
        if self.options.labels == "real":
            return labels.astype(np.float32)
        if not np.isin(labels, (-1.0, 0.0, 1.0)).all():
            return None
        return (labels > 0).astype(np.float32)

    def label_problem(self, label: float) -> str | None:
        if not np.isfinite(label):
            return f"label {label} is not a finite number"
        if abs(label) > FLOAT32_MAX:
            return (f"label {label:g} is outside float32's range (+-{FLOAT32_MAX:.4g}), in "
                    "which data sets store numbers")
        if self.options.labels == "binary" and label not in (-1.0, 0.0, 1.0):
            return f"label {label:g} not allowed (binary labels are -1/+1 or 0/1)"
        return None


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _fits_float32(block: Block) -> bool:
    """Whether a parsed block's numbers survived the float32 cast (finite
    input numbers past its range become infinite)."""
    return bool(np.isfinite(block.labels).all() and
                (block.values is None or np.isfinite(block.values).all()))


class LineError(ValueError):
    """Raised by ``parse_line``: the reason a line is bad."""


class TextFormat(InputFormat):
    """A line-oriented text format, parsed a chunk at a time."""

    def blocks(self, path: str) -> Iterator[Block]:
        for chunk in read_chunks(path, self.options.chunk_bytes, self.options.max_line_bytes):
            block = self.parse_chunk(chunk)
            if block is not None and block.rows:
                yield block

    def parse_chunk(self, chunk: TextChunk) -> Block | None:
        # a NUL byte is binary data: the line parser refuses its line
        block = self.parse_fast(chunk) if b"\0" not in chunk.data else None
        if block is not None and not _fits_float32(block):
            block = None  # a number past float32's range: the line parser names it
        return block if block is not None else self.parse_slow(chunk)

    def parse_fast(self, chunk: TextChunk) -> Block | None:
        return None

    def parse_line(self, line: bytes) -> tuple[float, np.ndarray, np.ndarray] | None:
        """One line as ``(label, keys, values)``; None for a blank line."""
        raise NotImplementedError

    def parse_slow(self, chunk: TextChunk) -> Block | None:
        labels: list[float] = []
        keys: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for offset, line in enumerate(chunk.data.split(b"\n")[:-1]):
            try:
                if b"\0" in line:
                    raise LineError("a NUL byte: binary data, not a line of text")
                parsed = self.parse_line(line)
            except (LineError, ValueError, OverflowError) as e:
                self.budget.skip(BadLine(chunk.source, chunk.first_line + offset, str(e)))
                continue
            if parsed is None:
                continue
            label, k, v = parsed
            big = np.flatnonzero(np.abs(v) > FLOAT32_MAX)
            if big.size:
                self.budget.skip(BadLine(chunk.source, chunk.first_line + offset,
                                         f"value {v[big[0]]:g} is outside float32's range "
                                         f"(+-{FLOAT32_MAX:.4g}), in which data sets store "
                                         "numbers"))
                continue
            labels.append(label)
            keys.append(k)
            values.append(v)
        if not labels:
            return None
        label_arr = self.check_labels(np.array(labels, np.float64))
        assert label_arr is not None, "parse_line must reject bad labels"
        counts = np.array([k.size for k in keys], np.int64)
        indptr = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        all_values = np.concatenate(values).astype(np.float32)
        return Block(label_arr, indptr, np.concatenate(keys).astype(np.uint64),
                     None if (all_values == 1).all() else all_values)
