"""Vectorised parsing of decimal number tokens in a byte buffer.

Text formats are parsed a whole chunk (megabytes) at a time: token boundaries
come from byte masks, and the digits of every token are summed with one
``np.add.reduceat``. There is no Python loop over tokens or lines. Only plain
decimals are handled here (``-12``, ``+0.5``, ``.25``, ``3.``); a chunk holding
anything else (exponents, ``nan``, ``inf``, garbage) makes :func:`parse_decimals`
return ``None`` and the caller falls back to a slower general parser that also
finds the offending line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPACE, NEWLINE, COLON, DOT, MINUS, PLUS = (ord(c) for c in " \n:.-+")
ZERO = ord("0")
# 18 decimal digits always fit in int64, so mantissas are exact integers.
MAX_DIGITS = 18
_POW10_INT = 10 ** np.arange(MAX_DIGITS + 1, dtype=np.int64)
# Powers of ten up to 1e22 are exact doubles: mantissa / 10**k is correctly rounded.
_POW10_FLOAT = np.array([10.0**k for k in range(MAX_DIGITS + 1)])
# Weight of a byte by its distance to the token end (uint8, so 256 entries).
_WEIGHT = np.zeros(256, np.int64)
_WEIGHT[:MAX_DIGITS + 1] = _POW10_INT
_POSITIONS8 = np.zeros(0, dtype=np.uint8)


def _positions8(n: int) -> np.ndarray:
    """``arange(n) % 256`` as uint8, from a cached array."""
    global _POSITIONS8
    if _POSITIONS8.size < n:
        size = max(n, 2 * _POSITIONS8.size)
        _POSITIONS8 = (np.arange(size) & 0xFF).astype(np.uint8)
    return _POSITIONS8[:n]


@dataclass
class Tokens:
    """Token boundaries of a buffer: ``buf[starts[i]:ends[i]]`` is token ``i``."""

    starts: np.ndarray  # int64
    ends: np.ndarray  # int64


def token_bounds(buf: np.ndarray, sep: np.ndarray) -> Tokens:
    """Maximal runs of non-separator bytes; ``sep`` is a bool mask over ``buf``."""
    body = ~sep
    edges = np.diff(body.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    return Tokens(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))


def parse_decimals(buf: np.ndarray, sep: np.ndarray, tok: Tokens
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """Values of all tokens as float64, plus a bool mask "token is an integer".

    Returns ``None`` if some token is not a plain decimal of at most 18 characters;
    the caller then uses a general parser.
    """
    n = buf.size
    if tok.starts.size == 0:
        return np.zeros(0), np.zeros(0, bool)
    digit = (buf >= ZERO) & (buf <= ZERO + 9)
    dot = buf == DOT
    first = buf[tok.starts]
    signed = (first == MINUS) | (first == PLUS)
    # Every non-separator byte must be a digit, a dot, or a leading sign.
    odd = ~(digit | dot | sep)
    if odd.any():
        odd_pos = np.flatnonzero(odd)
        if odd_pos.size != np.count_nonzero(signed) or not np.array_equal(
                odd_pos, tok.starts[signed]):
            return None
    dot_pos = np.flatnonzero(dot)
    tok_of_dot = np.searchsorted(tok.starts, dot_pos, side="right") - 1
    if tok_of_dot.size > 1 and (np.diff(tok_of_dot) == 0).any():
        return None  # two dots in one token
    lengths = tok.ends - tok.starts
    has_dot = np.zeros(tok.starts.size, bool)
    has_dot[tok_of_dot] = True
    ndigits = lengths - signed - has_dot
    if (lengths - signed).max() > MAX_DIGITS or ndigits.min() < 1:
        return None
    # Read every token's digits as one integer with the dot counted as a zero
    # digit: raw = int_part * 10**(frac+1) + frac_part. Each byte's weight is
    # 10**(distance to its token's last byte), computed in uint8 arithmetic:
    # positions past a token's end wrap to >= 238, which the weight table maps
    # to 0 (and those bytes are separators, whose digit value is 0 anyway).
    last8 = ((tok.ends - 1) & 0xFF).astype(np.uint8)
    segment = np.diff(tok.starts, append=n)
    segment[0] += tok.starts[0]  # leading separators ride with the first token
    power = np.repeat(last8, segment)
    power -= _positions8(n)
    terms = np.take(_WEIGHT, power)
    digit_value = buf - np.uint8(ZERO)
    digit_value *= digit  # separators, dots and signs weigh nothing
    terms *= digit_value
    raw = np.add.reduceat(terms, tok.starts)
    frac = np.zeros(tok.starts.size, np.int64)
    frac[tok_of_dot] = tok.ends[tok_of_dot] - dot_pos - 1
    scale = _POW10_INT[frac]
    mantissa = raw // (scale * 10) * scale + raw % (scale * 10)
    mantissa = np.where(has_dot, mantissa, raw)
    values = mantissa / _POW10_FLOAT[frac]
    values[signed & (first == MINUS)] *= -1.0
    return values, ~has_dot
