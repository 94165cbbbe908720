"""Key compression: sorted uint64 keys as deltas, then a byte-level varint
(LEB128: 7 bits a byte, high bit = more bytes follow) or zlib.

Both are vectorised: the varint encoder computes every key's byte length at
once and picks the 7-bit groups out of an (n, width) array with a mask; the
decoder finds value boundaries from the stop bytes and ORs the shifted groups
together with one ``reduceat``.

What to expect: hashed keys are spread evenly over 2**64, so n sorted keys
have deltas near 2**64 / n. A list of n keys out of 2**64 carries about
``64 - log2(n) + 1.44`` bits a key, so nothing saves much more than
``log2(n)`` bits a key: for n = 30,000, the bound is about 6.3 bytes a key and
the varint sends 7 (about 12% under 8). Key caching, not compression, is
what removes most key bytes of a repeated list.
"""

from __future__ import annotations

import zlib

import numpy as np

from .base import bytes_to_words, words_to_bytes

_SHIFTS = (7 * np.arange(10)).astype(np.uint64)


def deltas(keys: np.ndarray) -> np.ndarray:
    """First key, then differences (sorted keys: no wrap-around)."""
    out = np.empty_like(keys)
    if keys.size:
        out[0] = keys[0]
        np.subtract(keys[1:], keys[:-1], out=out[1:])
    return out


def undelta(d: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.cumsum(d, dtype=np.uint64)


def varint_encode(x: np.ndarray) -> np.ndarray:
    """uint64 values as LEB128 bytes (uint8), vectorised."""
    x = np.asarray(x, dtype=np.uint64)
    if x.size == 0:
        return np.empty(0, np.uint8)
    length = np.ones(x.size, dtype=np.int64)
    for j in range(1, 10):
        length += (x >> np.uint64(7 * j)) != 0
    width = int(length.max())
    groups = ((x[:, None] >> _SHIFTS[None, :width]) & np.uint64(0x7F)).astype(np.uint8)
    col = np.arange(width)[None, :]
    groups |= ((col < (length - 1)[:, None]) * 0x80).astype(np.uint8)
    return groups[col < length[:, None]]


def varint_decode(data: np.ndarray, n: int) -> np.ndarray:
    """``n`` uint64 values from LEB128 bytes."""
    data = np.asarray(data, dtype=np.uint8)
    if n == 0:
        return np.empty(0, np.uint64)
    stop = (data & 0x80) == 0
    ends = np.flatnonzero(stop)
    if ends.size != n or ends[-1] != data.size - 1:
        raise ValueError(f"varint keys: {ends.size} values in {data.size} bytes, "
                         f"expected {n}")
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    value_of = np.cumsum(stop) - stop  # the value each byte belongs to
    shift = (np.arange(data.size) - starts[value_of]) * 7
    if shift.max() > 63:
        raise ValueError("varint keys: a value longer than 10 bytes")
    parts = (data & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts)


def encode_keys(keys: np.ndarray, codec: str, level: int = 1) -> np.ndarray:
    """Sorted keys as uint64 words ``[n, nbytes, bytes...]`` (``codec``: varint or zlib)."""
    d = deltas(keys)
    if codec == "varint":
        payload = varint_encode(d)
    elif codec == "zlib":
        payload = np.frombuffer(zlib.compress(d.tobytes(), level), dtype=np.uint8)
    else:
        raise ValueError(f"unknown key codec {codec!r} (varint, zlib)")
    head = np.array([keys.size, payload.size], dtype=np.uint64)
    return np.concatenate([head, bytes_to_words(payload)])


def decode_keys(words: np.ndarray, codec: str) -> np.ndarray:
    """Inverse of :func:`encode_keys`."""
    if words.size < 2:
        raise ValueError("compressed keys: the section is shorter than its header")
    n, nbytes = int(words[0]), int(words[1])
    payload = words_to_bytes(words[2:], nbytes)
    if codec == "varint":
        d = varint_decode(payload, n)
    else:
        d = np.frombuffer(zlib.decompress(payload.tobytes()), dtype=np.uint64)
        if d.size != n:
            raise ValueError(f"zlib keys: {d.size} keys decoded, {n} announced")
    return undelta(d)
