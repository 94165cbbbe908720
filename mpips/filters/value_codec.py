"""Value compression: zlib from the standard library; lz4 and zstd when their
Python packages are installed (optional: ``pip install lz4 zstandard``).

Before compressing, the bytes of each item can be regrouped by significance
(a byte shuffle, as in Blosc): the sign/exponent bytes of float values are
similar from one value to the next and compress well once they sit together,
while mantissa bytes stay noise. Measured on float32 gradients and weights,
see ``python -m mpips bench filters --codecs``.

Payload: ``[raw length u64, item size u64, compressed bytes...]`` as uint8.
"""

from __future__ import annotations

import zlib

import numpy as np

from .base import VALUE_LZ4, VALUE_ZLIB, VALUE_ZSTD

try:  # optional: chosen by measurement, see the module doc
    import lz4.block as _lz4
except ImportError:  # pragma: no cover - depends on the environment
    _lz4 = None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None

CODEC_BITS = {"zlib": VALUE_ZLIB, "lz4": VALUE_LZ4, "zstd": VALUE_ZSTD}
BIT_CODECS = {b: n for n, b in CODEC_BITS.items()}


def available(codec: str) -> bool:
    return codec == "zlib" or (codec == "lz4" and _lz4 is not None) or \
        (codec == "zstd" and _zstd is not None)


def shuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    """Byte ``j`` of every item together, for j = 0 .. itemsize-1."""
    n = raw.size // itemsize * itemsize
    if itemsize <= 1 or n == 0:
        return raw
    body = raw[:n].reshape(-1, itemsize).T.reshape(-1)
    return np.concatenate([body, raw[n:]]) if n < raw.size else body


def unshuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    n = raw.size // itemsize * itemsize
    if itemsize <= 1 or n == 0:
        return raw
    body = raw[:n].reshape(itemsize, -1).T.reshape(-1)
    return np.concatenate([body, raw[n:]]) if n < raw.size else body


def compress(raw: np.ndarray, codec: str, level: int, itemsize: int) -> np.ndarray:
    """``raw`` bytes (uint8) compressed; ``itemsize`` > 1 shuffles bytes first."""
    data = shuffle(np.ascontiguousarray(raw).view(np.uint8), itemsize).tobytes()
    if codec == "zlib":
        out = zlib.compress(data, level)
    elif codec == "lz4":
        if _lz4 is None:
            raise RuntimeError("value codec 'lz4' needs the lz4 package (pip install lz4)")
        out = _lz4.compress(data, store_size=False)
    elif codec == "zstd":
        if _zstd is None:
            raise RuntimeError("value codec 'zstd' needs the zstandard package "
                               "(pip install zstandard)")
        out = _zstd.ZstdCompressor(level=level).compress(data)
    else:
        raise ValueError(f"unknown value codec {codec!r} (zlib, lz4, zstd)")
    head = np.array([len(data), itemsize], dtype=np.uint64).view(np.uint8)
    return np.concatenate([head, np.frombuffer(out, dtype=np.uint8)])


def decompress(payload: np.ndarray, codec: str) -> np.ndarray:
    """Inverse of :func:`compress`: the raw bytes (uint8)."""
    if payload.size < 16:
        raise ValueError(f"compressed values: {payload.size} bytes, shorter than the header")
    size, itemsize = (int(v) for v in payload[:16].view(np.uint64))
    body = payload[16:].tobytes()
    if codec == "zlib":
        data = zlib.decompress(body)
    elif codec == "lz4":
        if _lz4 is None:
            raise RuntimeError("values came lz4-compressed: install lz4 on every rank")
        data = _lz4.decompress(body, uncompressed_size=size)
    else:
        if _zstd is None:
            raise RuntimeError("values came zstd-compressed: install zstandard on every rank")
        data = _zstd.ZstdDecompressor().decompress(body, max_output_size=size)
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != size:
        raise ValueError(f"compressed values: {raw.size} bytes decoded, {size} announced")
    return unshuffle(raw, itemsize)
