"""Value encodings shared by both ends: fixed point, then a value codec."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import fixed_point, value_codec
from .base import FIXED_POINT, VALUE_CODEC_BITS
from .spec import Spec


class ValueCodec:
    """Key and value encodings shared by both ends."""

    def __init__(self, cfg: Any, specs: dict[tuple[int, str], Spec], seed: int):
        self.cfg = cfg.filters
        self.specs = specs
        self.rng = np.random.default_rng(seed)

    def encode_values(self, spec: Spec, vals: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
        """Values as filtered bytes and the header bits applied (0: unchanged)."""
        flags, out = 0, vals
        if spec.has("fixed_point") and vals.dtype.kind == "f":
            before = vals.nbytes
            q = fixed_point.quantize(vals, bits, self.rng, self.cfg.value_range)
            if q is not None:
                out, clipped = q
                flags |= FIXED_POINT
                st = spec.stat("fixed_point")
                st.add(before, out.nbytes)
                st.clipped += clipped
        codec = spec.value_codec
        if codec is not None:
            raw = np.ascontiguousarray(out).reshape(-1)
            itemsize = 1 if not self.cfg.value_shuffle else \
                (bits // 8 if flags & FIXED_POINT else raw.dtype.itemsize)
            packed = value_codec.compress(raw.view(np.uint8), codec, self.cfg.value_level,
                                          itemsize)
            spec.stat(codec).add(raw.nbytes, packed.nbytes)
            if packed.nbytes < raw.nbytes:  # incompressible: keep what we have
                out, flags = packed, flags | value_codec.CODEC_BITS[codec]
        return out, flags

    @staticmethod
    def decode_values(vals: np.ndarray, flags: int, dtype: np.dtype, vdim: int) -> np.ndarray:
        if flags & VALUE_CODEC_BITS:
            codec = value_codec.BIT_CODECS[flags & VALUE_CODEC_BITS]
            vals = value_codec.decompress(vals.view(np.uint8), codec)
            if not flags & FIXED_POINT:
                vals = vals.view(dtype)
        if flags & FIXED_POINT:
            vals = fixed_point.dequantize(vals.view(np.uint8), dtype)
        return vals.reshape(-1, vdim)
