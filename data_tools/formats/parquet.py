"""Parquet (what Spark writes by default), through pyarrow (optional extra).

Columns are chosen as for CSV: ``--label``, ``--numeric``, ``--categorical``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from data_tools.errors import DataError
from data_tools.formats.base import FLOAT32_MAX, Block, InputFormat, register
from data_tools.formats.csvfmt import column_hashing, columns_block


@register
class Parquet(InputFormat):
    name = "parquet"
    help = "Parquet files (pip install pyarrow); columns as for csv"

    def hashing(self) -> dict[str, Any]:
        return column_hashing(self.options)

    def blocks(self, path: str) -> Iterator[Block]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("the parquet format needs pyarrow: pip install pyarrow") from None
        opts = self.options
        if not opts.label_column:
            raise DataError("parquet needs --label COLUMN")
        wanted = [opts.label_column, *opts.numeric, *opts.categorical]
        try:
            handle = pq.ParquetFile(path)
            missing = [c for c in wanted if c not in handle.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: no column(s) {', '.join(missing)} "
                                f"(has {', '.join(handle.schema_arrow.names)})")
            rows_per_batch = max(1024, opts.chunk_bytes // 64)
            first_row = 0
            for batch in handle.iter_batches(batch_size=rows_per_batch, columns=wanted):
                yield self._block(path, batch, first_row)
                first_row += batch.num_rows
        except DataError:
            raise
        except Exception as e:  # pyarrow raises many types for corrupt files
            raise DataError(f"{path}: cannot read parquet: {e}") from None

    def _block(self, path: str, batch: Any, first_row: int) -> Block:
        opts = self.options
        labels = _floats(batch.column(opts.label_column))
        bad = np.flatnonzero(~np.isfinite(labels))
        if bad.size:
            raise DataError(f"{path}: row {first_row + int(bad[0])}: label missing or not "
                            "finite")
        numeric = {c: _floats(batch.column(c)) for c in opts.numeric}
        for c, values in [("label", labels), *numeric.items()]:
            big = np.flatnonzero(np.abs(values) > FLOAT32_MAX)  # NaN (missing) is not
            if big.size:
                raise DataError(f"{path}: row {first_row + int(big[0])}: {c} = "
                                f"{values[big[0]]:g} is outside float32's range "
                                f"(+-{FLOAT32_MAX:.4g}), in which data sets store numbers")
        categorical = {}
        for c in opts.categorical:
            col = batch.column(c)
            present = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False))
            text = col.cast("string").fill_null("").to_numpy(zero_copy_only=False)
            categorical[c] = (np.array([s.encode() for s in text], dtype="S"), present)
        stored = self.check_labels(labels)
        if stored is None:
            row = first_row + int(np.flatnonzero(~np.isin(labels, (-1.0, 0.0, 1.0)))[0])
            raise DataError(f"{path}: row {row}: label {labels[row - first_row]:g} not "
                            "allowed (binary labels are -1/+1 or 0/1; --labels real for "
                            "regression)")
        return columns_block(stored, numeric, categorical)


def _floats(column: Any) -> np.ndarray:
    return np.asarray(column.cast("double").to_numpy(zero_copy_only=False), np.float64)
