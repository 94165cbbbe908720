"""CSV with a header line and a column spec.

``--label COL`` names the label column, ``--numeric a,b`` the numeric columns
(one key per column, the number as value; empty cells are missing, zeros are
dropped) and ``--categorical c,d`` the categorical ones (one key per distinct
value: ``hash_feature(fnv1a64(value), salt=fnv1a64(column))``, value 1; empty
cells are missing). Other columns are ignored. Every file starts with the
header (Spark writes one per part file with ``header=true``). Quoted fields
may not contain newlines.

With pyarrow installed each chunk is parsed by ``pyarrow.csv`` (compiled);
a chunk it cannot take whole (a bad row, too few fields, a bad label or a
non-finite number) goes through the line-by-line parser, which names the
file and line of every bad row exactly as without pyarrow.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from data_tools.errors import BadLine, DataError
from data_tools.formats.base import FLOAT32_MAX, Block, ConvertOptions, InputFormat, register
from data_tools.sources import read_chunks
from mpips.keys import fnv1a64, fnv1a64_text, hash_feature


def column_hashing(options: ConvertOptions) -> dict[str, Any]:
    return {"method": "mpips.keys.hash_feature",
            "numeric_columns": "key = hash_feature(0, fnv1a64(column)), value = number",
            "categorical_columns": "key = hash_feature(fnv1a64(utf8 value), fnv1a64(column))",
            "label": options.label_column, "numeric": options.numeric,
            "categorical": options.categorical}


def columns_block(labels: np.ndarray, numeric: dict[str, np.ndarray],
                  categorical: dict[str, tuple[np.ndarray, np.ndarray]]) -> Block:
    """Rows from columns: numeric arrays hold NaN where missing; categorical
    columns are (bytes array, present mask)."""
    rows = labels.size
    keys = np.empty((rows, len(numeric) + len(categorical)), np.uint64)
    values = np.ones(keys.shape)
    present = np.zeros(keys.shape, bool)
    for j, (name, col) in enumerate(numeric.items()):
        keys[:, j] = hash_feature(0, fnv1a64_text(name))
        values[:, j] = col
        present[:, j] = np.isfinite(col) & (col != 0)
    for j, (name, (text, mask)) in enumerate(categorical.items(), start=len(numeric)):
        keys[:, j] = hash_feature(fnv1a64(text), fnv1a64_text(name))
        present[:, j] = mask
    block = Block.from_dense(labels, keys, values, present)
    if block.values is not None and (block.values == 1).all():
        block.values = None
    return block


LINES = object()  # a chunk pyarrow cannot take whole: parse it line by line


@register
class CSV(InputFormat):
    name = "csv"
    help = "CSV with a header; --label, --numeric, --categorical name the columns"

    def hashing(self) -> dict[str, Any]:
        return column_hashing(self.options)

    def blocks(self, path: str) -> Iterator[Block]:
        opts = self.options
        if not opts.label_column:
            raise DataError("csv needs --label COLUMN (and --numeric/--categorical)")
        columns: list[int] | None = None
        width = 0
        arrow = _arrow_csv()
        for chunk in read_chunks(path, opts.chunk_bytes, opts.max_line_bytes):
            data, first = chunk.data, chunk.first_line
            if columns is None:
                cut = data.index(b"\n") + 1
                header = data[:cut].decode("utf-8", errors="replace").rstrip("\r\n")
                columns, width = self._header(path, header), len(self._fields(header))
                data, first = data[cut:], first + 1
            # a NUL byte is binary data: the line parser refuses its line
            block = self._parse_arrow(arrow, data, columns, width) \
                if arrow and b"\0" not in data else LINES
            if block is LINES:
                # split on \n only: str.splitlines would also split on \x0b, \x1c,
                # ... and shift the line numbers in error messages.
                text = data.decode("utf-8", errors="replace")
                lines = [line.rstrip("\r") for line in text.split("\n")[:-1]]
                block = self._parse(path, first, lines, columns)
            if block is not None:
                yield block

    def _fields(self, line: str) -> list[str]:
        return next(csv.reader([line], delimiter=self.options.delimiter), [])

    def _parse_arrow(self, arrow: Any, data: bytes, columns: list[int], width: int
                     ) -> Block | None | object:
        """The chunk's rows by pyarrow.csv (None: no rows), or LINES when a
        row needs the line-by-line parser (which then reports it)."""
        opts = self.options
        names = [f"c{i}" for i in range(width)]
        wanted = [names[c] for c in columns]
        types = {wanted[0]: arrow.pa.float64(),
                 **{n: arrow.pa.float64() for n in wanted[1:1 + len(opts.numeric)]},
                 **{n: arrow.pa.string() for n in wanted[1 + len(opts.numeric):]}}
        try:
            table = arrow.csv.read_csv(
                io.BytesIO(data),
                read_options=arrow.csv.ReadOptions(column_names=names, use_threads=False),
                parse_options=arrow.csv.ParseOptions(delimiter=opts.delimiter,
                                                     newlines_in_values=False),
                convert_options=arrow.csv.ConvertOptions(
                    column_types=types, include_columns=wanted, strings_can_be_null=False,
                    quoted_strings_can_be_null=False))
        except (arrow.pa.ArrowInvalid, arrow.pa.ArrowNotImplementedError):
            return LINES
        if table.num_rows == 0:
            return None
        label_col = table.column(wanted[0])
        if label_col.null_count:
            return LINES
        labels = label_col.to_numpy()
        if any(self.label_problem(float(v)) for v in np.unique(labels)):
            return LINES
        numeric = {}
        for name, col in zip(opts.numeric, wanted[1:1 + len(opts.numeric)], strict=True):
            column = table.column(col)
            written_nan = arrow.pc.fill_null(arrow.pc.is_nan(column), False).to_numpy()
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # null: NaN
            if written_nan.any() or not (np.abs(values[~np.isnan(values)])
                                         <= FLOAT32_MAX).all():
                return LINES  # not finite or past float32: the line parser names the line
            numeric[name] = values
        categorical = {}
        for name, col in zip(opts.categorical, wanted[1 + len(opts.numeric):], strict=True):
            text = np.array(table.column(col).cast(arrow.pa.binary()).to_pylist(), dtype="S")
            categorical[name] = (text, text != b"")
        stored = self.check_labels(labels)
        assert stored is not None
        return columns_block(stored, numeric, categorical)

    def _header(self, path: str, line: str) -> list[int]:
        header = self._fields(line)
        wanted = [self.options.label_column, *self.options.numeric, *self.options.categorical]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"{path}:1: header has no column(s) {', '.join(map(str, missing))}"
                            f" (has {', '.join(header)})")
        return [header.index(c) for c in wanted]  # type: ignore[arg-type]

    def _parse(self, path: str, first: int, lines: list[str], columns: list[int]
               ) -> Block | None:
        opts = self.options
        n_num = len(opts.numeric)
        labels: list[float] = []
        cells: list[list[str]] = []
        width = max(columns) + 1
        for offset, fields in enumerate(csv.reader(lines, delimiter=opts.delimiter)):
            if not fields:
                continue
            problem = None
            if "\0" in lines[offset]:
                problem = "a NUL byte: binary data, not a line of text"
            elif len(fields) < width:
                problem = f"{len(fields)} fields, the header needs at least {width}"
            else:
                picked = [fields[c] for c in columns]
                problem = self._row_problem(picked)
            if problem:
                self.budget.skip(BadLine(path, first + offset, problem))
                continue
            labels.append(float(picked[0]))
            cells.append(picked[1:])
        if not labels:
            return None
        table = np.array(cells, dtype=object).reshape(len(cells), -1)
        numeric = {name: np.array([float(v) if v else np.nan for v in table[:, j]])
                   for j, name in enumerate(opts.numeric)}
        categorical = {}
        for j, name in enumerate(opts.categorical, start=n_num):
            text = np.array([v.encode() for v in table[:, j]], dtype="S")
            categorical[name] = (text, text != b"")
        stored = self.check_labels(np.array(labels))
        assert stored is not None
        return columns_block(stored, numeric, categorical)

    def _row_problem(self, picked: list[str]) -> str | None:
        try:
            label = float(picked[0])
        except ValueError:
            return f"label {picked[0]!r} is not a number"
        problem = self.label_problem(label)
        if problem:
            return problem
        for name, raw in zip(self.options.numeric, picked[1:], strict=False):
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                return f"column {name} = {raw!r} is not a number"
            if not np.isfinite(value):
                return f"column {name} = {raw!r} is not finite"
            if abs(value) > FLOAT32_MAX:
                return (f"column {name} = {raw!r} is outside float32's range "
                        f"(+-{FLOAT32_MAX:.4g}), in which data sets store numbers")
        return None


class _Arrow:
    def __init__(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv
        self.pa, self.pc, self.csv = pa, pc, pcsv


def _arrow_csv() -> _Arrow | None:
    """pyarrow's CSV reader, or None (MPIPS_PYARROW_CSV=0 turns it off)."""
    import os
    if os.environ.get("MPIPS_PYARROW_CSV", "1") == "0":
        return None
    try:
        return _Arrow()
    except ImportError:
        return None
