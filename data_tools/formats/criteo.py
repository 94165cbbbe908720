"""Criteo-style TSV: ``label <TAB> I1..I13 <TAB> C1..C26``.

Integer columns ``I<j>`` become one key each, ``hash_feature(0, salt=fnv1a64("I<j>"))``,
with the integer as value; categorical columns hold hexadecimal ids (up to 16
digits) and become ``hash_feature(int(hex, 16), salt=fnv1a64("C<j>"))`` with value
1. Empty fields are missing features; integer zeros are dropped (they add
nothing to a linear score). The numbers of columns are options.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_tools.formats.base import Block, LineError, TextFormat, register
from data_tools.sources import TextChunk
from mpips.keys import fnv1a64_text, hash_feature

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


@register
class Criteo(TextFormat):
    name = "criteo"
    help = "criteo-style TSV: label, integer columns, hex categorical columns"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        n_int, n_cat = self.options.criteo_ints, self.options.criteo_cats
        self.int_names = [f"I{j + 1}" for j in range(n_int)]
        self.cat_names = [f"C{j + 1}" for j in range(n_cat)]
        self.int_keys = np.array([hash_feature(0, fnv1a64_text(n)) for n in self.int_names],
                                 np.uint64)
        self.cat_salts = [fnv1a64_text(n) for n in self.cat_names]
        self.width = 1 + n_int + n_cat

    def hashing(self) -> dict[str, Any]:
        return {"method": "mpips.keys.hash_feature",
                "integer_columns": "key = hash_feature(0, fnv1a64(name)), value = integer",
                "categorical_columns": "key = hash_feature(int(hex, 16), fnv1a64(name))",
                "columns": ["label", *self.int_names, *self.cat_names]}

    def parse_fast(self, chunk: TextChunk) -> Block | None:
        rows = chunk.data.count(b"\n")
        fields = chunk.data.replace(b"\r", b"").replace(b"\n", b"\t").split(b"\t")[:-1]
        if len(fields) != rows * self.width:
            return None
        table = np.array(fields, dtype="S").reshape(rows, self.width)
        n_int = len(self.int_names)
        numbers = table[:, :1 + n_int]
        empty = numbers == b""
        if empty[:, 0].any():
            return None
        try:
            parsed = np.where(empty, b"0", numbers).astype(np.float64)
        except ValueError:
            return None
        if not np.isfinite(parsed).all():
            return None
        ints = parsed[:, 1:]
        if (ints != np.floor(ints)).any():
            return None
        labels = self.check_labels(parsed[:, 0])
        cats = self._hex_ids(table[:, 1 + n_int:])
        if labels is None or cats is None:
            return None
        return self._block(labels, ints, ~empty[:, 1:] & (ints != 0), *cats)

    def _hex_ids(self, cats: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        width = cats.dtype.itemsize
        if width > 16:
            return None
        present = cats != b""
        chars = np.ascontiguousarray(cats).view(np.uint8).reshape(*cats.shape, width)
        nibbles = _HEX[chars]
        padding = chars == 0
        if ((nibbles == 255) & ~padding).any():
            return None
        ids = np.zeros(cats.shape, np.uint64)
        for j in range(width):  # Horner over character positions, not values
            live = ~padding[..., j]
            ids[live] = (ids[live] << np.uint64(4)) | nibbles[..., j][live].astype(np.uint64)
        return ids, present

    def _block(self, labels: np.ndarray, ints: np.ndarray, int_present: np.ndarray,
               cat_ids: np.ndarray, cat_present: np.ndarray) -> Block:
        cat_keys = np.empty(cat_ids.shape, np.uint64)
        for j, salt in enumerate(self.cat_salts):
            cat_keys[:, j] = hash_feature(cat_ids[:, j], salt)
        keys = np.hstack([np.broadcast_to(self.int_keys, ints.shape), cat_keys])
        values = np.hstack([ints, np.ones(cat_ids.shape)])
        present = np.hstack([int_present, cat_present])
        return Block.from_dense(labels, keys, values, present)

    def parse_line(self, line: bytes) -> tuple[float, np.ndarray, np.ndarray] | None:
        if not line.strip():
            return None
        fields = line.rstrip(b"\r").split(b"\t")
        if len(fields) != self.width:
            raise LineError(f"{len(fields)} tab-separated fields, expected {self.width}")
        label = _parse(fields[0], "label")
        problem = self.label_problem(label)
        if problem:
            raise LineError(problem)
        n_int = len(self.int_names)
        ints = np.zeros((1, n_int))
        int_present = np.zeros((1, n_int), bool)
        for j, raw in enumerate(fields[1:1 + n_int]):
            if raw:
                value = _parse(raw, self.int_names[j])
                if not np.isfinite(value) or value != int(value):
                    raise LineError(f"{self.int_names[j]} = {raw.decode(errors='replace')!r}"
                                    " is not an integer")
                ints[0, j] = value
                int_present[0, j] = value != 0
        cats = np.zeros((1, len(self.cat_names)), np.uint64)
        cat_present = np.zeros_like(cats, bool)
        for j, raw in enumerate(fields[1 + n_int:]):
            if raw:
                try:
                    if len(raw) > 16:
                        raise ValueError
                    cats[0, j] = int(raw, 16)
                except ValueError:
                    raise LineError(f"{self.cat_names[j]} = {raw.decode(errors='replace')!r}"
                                    " is not a hexadecimal id") from None
                cat_present[0, j] = True
        block = self._block(np.array([label]), ints, int_present, cats, cat_present)
        values = block.values if block.values is not None else np.ones(block.nnz)
        return label, block.indices, values


def _parse(raw: bytes, what: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise LineError(f"{what} = {raw.decode(errors='replace')!r} is not a number") from None
