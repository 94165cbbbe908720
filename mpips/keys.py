"""Keys: the definitions every layer shares.

Keys are uint64. Raw integer ids become keys with :func:`hash_feature`
(SplitMix64's finaliser, :func:`mix64`); categorical strings first become
integers with :func:`fnv1a64` (64-bit FNV-1a over the UTF-8 bytes), and a
column's salt is ``fnv1a64_text`` of its name. These definitions are part of
the data format: changing any of them invalidates every converted data set
and trained model. Python's ``hash()`` is not used anywhere (it differs
between processes).

:func:`check_keys` is the one check of a request's keys, at the worker's door.
"""

from __future__ import annotations

import numpy as np

KEY_DTYPE = np.dtype(np.uint64)
KEY_MAX = np.uint64(2**64 - 1)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray | int) -> np.ndarray:
    """The 64-bit mixer that turns raw ids into well-spread keys.

    It is SplitMix64's output function (Steele, Lea and Flood, 2014; the
    Stafford "variant 13" finaliser): ``z = x + 0x9E3779B97F4A7C15;
    z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB;
    return z ^ z>>31``, all modulo 2**64. It is a bijection on uint64, so two
    distinct ids never collide, and every output bit depends on every input bit.
    This definition is part of the data format: changing it invalidates every
    converted data set and trained model.
    """
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


_MASK64 = (1 << 64) - 1


def mix64_int(x: int) -> int:
    """:func:`mix64` of one Python int, without numpy scalars (far cheaper);
    an ``x`` of 2**64 or more counts modulo 2**64."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def hash_feature(ids: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """Keys for raw integer feature ids, with a namespace ``salt``.

    ``key = mix64(id ^ mix64(salt))`` for ``salt != 0`` and ``mix64(id)`` for
    ``salt == 0``: ids of different fields (salts) land on unrelated keys.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
        raise ValueError("feature ids must be non-negative")
    ids = ids.astype(np.uint64, copy=False)
    if salt:
        ids = ids ^ mix64(np.uint64(salt))
    return mix64(ids)


def strictly_increasing(keys: np.ndarray) -> bool:
    """Whether ``keys`` (1-d) are sorted and unique."""
    return keys.size < 2 or bool(np.less(keys[:-1], keys[1:]).all())


def check_keys(keys: np.ndarray, what: str = "keys") -> np.ndarray:
    """Return ``keys`` as a 1-d uint64 array, or raise if not sorted and unique."""
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"{what} must be a 1-d array, got shape {keys.shape}")
    if keys.dtype != KEY_DTYPE:
        if keys.dtype.kind not in "iu":
            raise TypeError(f"{what} must be uint64, got dtype {keys.dtype}")
        if keys.dtype.kind == "i" and keys.size and keys.min() < 0:
            raise ValueError(f"{what} must be non-negative")
        keys = keys.astype(KEY_DTYPE)
    if not strictly_increasing(keys):
        i = int(np.argmin(keys[1:] > keys[:-1]))
        kind = "duplicate" if keys[i] == keys[i + 1] else "unsorted"
        raise ValueError(
            f"{what} must be sorted and unique: {kind} key {int(keys[i + 1])} "
            f"at position {i + 1} follows {int(keys[i])}"
        )
    return keys


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


# ---- from keys back to features ----------------------------------------------------
_M1_INV = np.uint64(pow(0xBF58476D1CE4E5B9, -1, 1 << 64))
_M2_INV = np.uint64(pow(0x94D049BB133111EB, -1, 1 << 64))


def _unshift(z: np.ndarray, s: int) -> np.ndarray:
    """Inverse of ``z ^ (z >> s)``: the top s bits are right, then the next s..."""
    x = z.copy()
    for _ in range(64 // s + 1):
        x = z ^ (x >> np.uint64(s))
    return x


def unmix64(keys: np.ndarray | int) -> np.ndarray:
    """The inverse of :func:`mix64` (it is a bijection): ``unmix64(mix64(x)) == x``."""
    z = np.array(keys, dtype=np.uint64, ndmin=1)
    with np.errstate(over="ignore"):
        z = _unshift(z, 31) * _M2_INV
        z = _unshift(z, 27) * _M1_INV
        return _unshift(z, 30) - _GOLDEN


def feature_names(keys: np.ndarray, hashing: dict | None) -> list[str]:
    """The feature each key stands for, from the ``hashing`` record of the
    data set it was trained on (manifest.json; data_tools convert writes it):
    integer ids (kept, or hashed with a salt: inverted exactly), numeric
    column names, criteo's hex categories (``name=hex``); a key the record
    cannot explain (a categorical string's FNV hash) stays ``0x...``."""
    keys = np.asarray(keys, dtype=np.uint64)
    names = [f"{int(k):#018x}" for k in keys]
    if not hashing:
        return names
    method = hashing.get("method")
    if method == "identity":
        return [str(int(k)) for k in keys]
    if method != "mpips.keys.hash_feature":
        return names
    if "salt" in hashing:  # libsvm ids: key = mix64(id ^ mix64(salt))
        salt = int(hashing.get("salt") or 0)
        ids = unmix64(keys)
        if salt:
            ids = ids ^ mix64(np.uint64(salt))
        return [str(int(i)) for i in ids]
    numeric = list(hashing.get("numeric") or [])
    criteo = hashing.get("columns")
    categorical: list[str] = list(hashing.get("categorical") or [])
    if criteo:  # ["label", I1.., C1..]: integer columns then hex categorical ones
        numeric = [c for c in criteo[1:] if c.startswith("I")]
        categorical = [c for c in criteo[1:] if c.startswith("C")]
    by_key = {int(hash_feature(0, fnv1a64_text(c))): c for c in numeric}
    out = []
    inverted = unmix64(keys)
    salts = [(c, int(mix64(np.uint64(fnv1a64_text(c))))) for c in categorical] if criteo else []
    for k, u, name in zip(keys.tolist(), inverted.tolist(), names, strict=True):
        if k in by_key:
            out.append(by_key[k])
            continue
        # criteo categories are 32-bit hex: exactly one column salt gives such a value
        fits = [(c, u ^ s) for c, s in salts if (u ^ s) < (1 << 32)]
        out.append(f"{fits[0][0]}={fits[0][1]:08x}" if len(fits) == 1 else name)
    return out
