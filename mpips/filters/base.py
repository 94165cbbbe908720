"""What every filter shares: the bits a message's header ``filters`` field
carries, per-filter statistics, the 64-bit key-list signature, and packing
bytes into the uint64 key section.

A filtered message keeps the ordinary wire layout (header | keys | vals |
meta). The ``filters`` header field says which encodings were applied, so the
receiver undoes exactly those, in reverse order; each encoding writes the few
numbers it needs (counts, ranges) in front of its own payload. Encoded keys
travel as uint64 words, encoded values as uint8 bytes with ``vdim = 0`` (the
receiver restores dtype and vdim from its table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..keys import mix64_int

# Bits of the header's ``filters`` field.
KEY_CACHE_HIT = 1 << 0     # keys section = [signature, n]: the receiver has the list
KEY_CACHE_STORE = 1 << 1   # keys section = [signature, body...]: keep the list under it
KEY_VARINT = 1 << 2        # key body = [n, nbytes, delta + varint bytes...]
KEY_ZLIB = 1 << 3          # key body = [n, nbytes, zlib(deltas)...]
FIXED_POINT = 1 << 4       # values = fixed-point payload (see fixed_point.py)
VALUE_ZLIB = 1 << 5        # values = [raw length, item size, compressed bytes...]
VALUE_LZ4 = 1 << 6
VALUE_ZSTD = 1 << 7
SIGNIFICANT = 1 << 8       # informational: entries were held back at the sender
KKT = 1 << 9               # informational: entries were skipped by the KKT test
ENTRY_MASK = 1 << 10       # meta = bitmap of the keys whose rows were sent (the rest held)

VALUE_CODEC_BITS = VALUE_ZLIB | VALUE_LZ4 | VALUE_ZSTD
VALUE_BITS = FIXED_POINT | VALUE_CODEC_BITS
KEY_BITS = KEY_CACHE_HIT | KEY_CACHE_STORE | KEY_VARINT | KEY_ZLIB


@dataclass
class FilterStats:
    """What one filter did in one direction on one rank."""

    messages: int = 0        # messages it encoded
    bytes_before: int = 0    # bytes of the section(s) it encoded, before
    bytes_after: int = 0     # and after
    entries_dropped: int = 0  # keys (with their values) not sent
    hits: int = 0            # key cache: repeats sent as a signature
    misses: int = 0          # key cache: lists sent in full (and stored)
    evictions: int = 0       # key cache: lists dropped to stay within budget
    clipped: int = 0         # fixed point: values outside a given range

    def add(self, before: int, after: int, dropped: int = 0) -> None:
        self.messages += 1
        self.bytes_before += before
        self.bytes_after += after
        self.entries_dropped += dropped

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if v}


_SIG_SALT = 0x6A09E667F3BCC909
_SIG_BLOCK = 4096
_sig_rng = np.random.default_rng(0x5EED)
# Odd 64-bit weights: one per position in a block, one per block (grown on demand).
_SIG_W = _sig_rng.integers(0, 2**64, _SIG_BLOCK, dtype=np.uint64) | np.uint64(1)
_sig_wblock = _sig_rng.integers(0, 2**64, 1024, dtype=np.uint64) | np.uint64(1)


def _block_weights(m: int) -> np.ndarray:
    global _sig_wblock
    if m > _sig_wblock.size:
        more = np.random.default_rng([0x5EED, m]).integers(
            0, 2**64, m - _sig_wblock.size, dtype=np.uint64) | np.uint64(1)
        _sig_wblock = np.concatenate([_sig_wblock, more])
    return _sig_wblock[:m]


def signature(keys: np.ndarray) -> int:
    """A 64-bit signature of a key list: the sum of its keys times random odd
    weights mod 2^64, a weight per position (the product of a weight of the
    position in its 4096-key block and one of the block), mixed with the count
    by SplitMix64's finaliser. Two different lists of one length share it with
    probability about 2^-64 (unless all their differences are multiples of a
    large power of two). One pass of numpy's integer dot: cheaper than a
    checksum of the bytes (figures in docs/performance.md)."""
    keys = np.ascontiguousarray(keys)
    n = keys.size
    m = n // _SIG_BLOCK
    total = 0  # modulo 2^64: numpy's integer dots wrap, and mix64_int masks
    if m:
        sums = keys[: m * _SIG_BLOCK].reshape(m, _SIG_BLOCK) @ _SIG_W
        total = int(np.dot(sums, _block_weights(m + 1)[:m]))
    if n > m * _SIG_BLOCK:
        tail = int(np.dot(keys[m * _SIG_BLOCK:], _SIG_W[: n - m * _SIG_BLOCK]))
        total += tail * int(_block_weights(m + 1)[m])
    return mix64_int(mix64_int(total ^ _SIG_SALT) ^ mix64_int(n))


def bytes_to_words(data: bytes | np.ndarray) -> np.ndarray:
    """Bytes as uint64 words, zero-padded to a multiple of 8 (the key section
    holds only uint64)."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    pad = -raw.size % 8
    if pad:
        raw = np.concatenate([raw, np.zeros(pad, np.uint8)])
    return raw.view(np.uint64)


def words_to_bytes(words: np.ndarray, nbytes: int) -> np.ndarray:
    """The first ``nbytes`` bytes of ``words`` (inverse of :func:`bytes_to_words`)."""
    raw = np.ascontiguousarray(words).view(np.uint8)
    if nbytes > raw.size:
        raise ValueError(f"filtered keys: {nbytes} bytes announced, {raw.size} received")
    return raw[:nbytes]


def concat(buf: np.ndarray | list[np.ndarray] | None) -> np.ndarray | None:
    """One array from a message section given as pieces (a copy only if several)."""
    if buf is None or isinstance(buf, np.ndarray):
        return buf
    if len(buf) == 1:
        return buf[0]
    return np.concatenate(buf) if buf else None
