"""Deterministic string hashing for categorical values and field salts.

Categorical strings become keys in two steps: ``fnv1a64`` (64-bit FNV-1a over
the UTF-8 bytes: ``h = 0xcbf29ce484222325; for byte b: h = (h ^ b) *
0x100000001b3 mod 2**64``), then :func:`mpips.ring.hash_feature` with the
column's salt, which is ``fnv1a64`` of the column name. Both are fixed
definitions, identical in every process and run (Python's ``hash()`` is not).
A value may not end in NUL bytes (numpy bytes arrays strip them).
"""

from __future__ import annotations

import numpy as np

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def fnv1a64(values: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of every element of a bytes array (dtype ``S``), vectorised.

    The loop runs over character positions (the array's width), not values.
    """
    values = np.asarray(values)
    if values.dtype.kind == "U":
        values = np.char.encode(values, "utf-8")
    if values.dtype.kind != "S":
        raise TypeError(f"fnv1a64 needs a bytes array, got dtype {values.dtype}")
    flat = values.reshape(-1)
    width = flat.dtype.itemsize
    out = np.full(flat.size, FNV_OFFSET, dtype=np.uint64)
    if width == 0 or flat.size == 0:
        return out.reshape(values.shape)
    chars = flat.view(np.uint8).reshape(flat.size, width)
    lengths = width - np.argmax(chars[:, ::-1] != 0, axis=1)
    lengths[~chars.any(axis=1)] = 0
    with np.errstate(over="ignore"):
        for j in range(width):
            live = lengths > j
            mixed = (out ^ chars[:, j].astype(np.uint64)) * FNV_PRIME
            out = np.where(live, mixed, out)
    return out.reshape(values.shape)


def fnv1a64_text(text: str) -> int:
    """FNV-1a 64 of one string (for salts), as a Python int."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h
