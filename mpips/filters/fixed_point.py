"""Fixed-point rounding: floats to 8 or 16 bits with unbiased random rounding.

Values are put on a grid of step ``s`` chosen so that the range ``[lo, hi]``
(given, or the message's min and max) spans ``2**bits - 2`` steps, and the grid
is aligned on multiples of ``s``: zero is a grid point, so zero values (the
many zero weights of an L1 model) stay exactly zero. A value ``v`` at
``t = v / s - origin`` grid units becomes ``floor(t + u)`` with ``u`` uniform in
[0, 1): it rounds up with probability ``frac(t)``, so the decoded value's
expectation is ``v`` (unbiased) and its error is below one step. With a given
range, values outside are clipped first (biased; counted as ``clipped``).

Payload (uint8): ``[count i64, origin i64, step f64, bits i64, codes...]``.
"""

from __future__ import annotations

import numpy as np

_HEAD = np.dtype([("count", "<i8"), ("origin", "<i8"), ("step", "<f8"), ("bits", "<i8")])


def quantize(values: np.ndarray, bits: int, rng: np.random.Generator,
             value_range: float = 0.0) -> tuple[np.ndarray, int] | None:
    """``(payload, clipped)``, or None when values are not all finite (they are
    then sent as they are)."""
    if bits not in (8, 16):
        raise ValueError(f"fixed point: bits must be 8 or 16, got {bits}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    levels = (1 << bits) - 1
    clipped = 0
    if v.size == 0:
        lo = hi = 0.0
    elif value_range > 0:
        lo, hi = -value_range, value_range
        clipped = int(np.count_nonzero((v < lo) | (v > hi)))
        if clipped:
            v = np.clip(v, lo, hi)
    else:
        lo, hi = float(v.min()), float(v.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return None
    step = (hi - lo) / (levels - 1) if hi > lo else max(abs(hi), 1.0)
    origin = int(np.floor(lo / step))
    t = v / step - origin  # in [0, levels): lo sits in [origin, origin + 1) steps
    codes = np.floor(t + rng.random(v.size))
    np.clip(codes, 0, levels, out=codes)  # guards float rounding at the edges
    head = np.zeros(1, dtype=_HEAD)
    head[0] = (v.size, origin, step, bits)
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    return np.concatenate([head.view(np.uint8), codes.astype(dtype).view(np.uint8)]), clipped


def dequantize(payload: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`quantize` (in expectation): flat values of ``dtype``."""
    if payload.size < _HEAD.itemsize:
        raise ValueError("fixed-point values: payload shorter than its header")
    head = payload[:_HEAD.itemsize].view(_HEAD)[0]
    count, origin, step, bits = (int(head["count"]), int(head["origin"]),
                                 float(head["step"]), int(head["bits"]))
    codes = payload[_HEAD.itemsize:].view(np.uint8 if bits == 8 else np.dtype("<u2"))
    if codes.size != count:
        raise ValueError(f"fixed-point values: {codes.size} codes, {count} announced")
    return ((codes.astype(np.int64) + origin) * step).astype(dtype)
