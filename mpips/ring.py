"""The key ring: uint64 key space cut into contiguous ranges owned by servers.

The key space [0, 2**64) is cut into ``R = servers * virtual_servers`` equal
ranges. Range ``r`` covers ``[bounds[r], bounds[r+1])`` (the last one ends at
2**64, which does not fit in uint64, so it is kept implicit). Ranges are dealt
to servers round-robin in ring order, so with virtual servers each server owns
several segments spread over the ring, as in Chord. The ``k`` successors of a
range's owner on the ring hold its replicas.

Apps hash raw feature ids into the key space with :func:`mix64` so that equal
ranges carry equal load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    """:func:`mix64` of one Python int (1 us, against 10 us through numpy scalars);
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


class RingError(RuntimeError):
    """The ring cannot serve: every holder of some range is dead."""


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


@dataclass(frozen=True)
class KeyRing:
    """Ranges of the key space, their owners and replica holders.

    ``servers`` are the server ids 0..S-1 in ring order (the layout maps them
    to MPI ranks). ``replication`` is k, the number of successors that hold a
    copy of each range. Range ``r``'s home is server ``r % S``; its owner is
    the first live server from its home on, and its replicas are the k live
    servers after the owner. When an owner dies, its first live successor,
    which holds a replica, becomes the owner: failover is a status change.
    """

    servers: int
    virtual_servers: int = 1
    replication: int = 0
    version: int = 0
    dead: frozenset[int] = frozenset()
    bounds: np.ndarray = field(init=False, repr=False, compare=False)
    owners: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.servers < 1:
            raise ValueError("the ring needs at least one server")
        if self.virtual_servers < 1:
            raise ValueError("virtual_servers must be at least 1")
        if not 0 <= self.replication < self.servers:
            raise ValueError(
                f"replication k={self.replication} needs k < servers={self.servers}"
            )
        if len(self.dead) >= self.servers:
            raise RingError("every server of the ring is dead")
        nranges = self.servers * self.virtual_servers
        # Equal cuts of [0, 2**64), computed exactly with Python ints.
        bounds = np.array([(r << 64) // nranges for r in range(nranges)], dtype=np.uint64)
        bounds.setflags(write=False)
        order = self._live_from(np.arange(self.servers))
        owners = np.array([order[r % self.servers][0] for r in range(nranges)], np.int64)
        owners.setflags(write=False)
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "owners", owners)

    def _live_from(self, homes: np.ndarray) -> list[list[int]]:
        """For each home server, the live servers in ring order from it."""
        S = self.servers
        return [[(h + i) % S for i in range(S) if (h + i) % S not in self.dead]
                for h in homes.tolist()]

    @property
    def live_servers(self) -> list[int]:
        return [s for s in range(self.servers) if s not in self.dead]

    def without(self, server: int) -> KeyRing:
        """The ring after ``server`` died: its ranges move to live successors."""
        return replace(self, version=self.version + 1, dead=self.dead | {server})

    def without_all(self, dead: list[int], version: int) -> KeyRing:
        """The ring with ``dead`` servers gone, at ``version`` (as broadcast)."""
        return replace(self, version=version, dead=frozenset(dead))

    @property
    def num_ranges(self) -> int:
        return int(self.bounds.size)

    def range_of(self, r: int) -> tuple[int, int]:
        """``[lo, hi)`` of range ``r`` as Python ints (hi may be 2**64)."""
        lo = int(self.bounds[r])
        hi = int(self.bounds[r + 1]) if r + 1 < self.num_ranges else 1 << 64
        return lo, hi

    def ranges_of_server(self, server: int) -> list[int]:
        return [int(r) for r in np.flatnonzero(self.owners == server)]

    def replicas(self, r: int) -> list[int]:
        """The k live servers after range ``r``'s owner on the ring (fewer when
        fewer are alive), owner excluded."""
        owner = int(self.owners[r])
        after = self._live_from(np.array([owner]))[0][1:]
        return after[: self.replication]

    def holders(self, r: int) -> list[int]:
        """Owner and replicas of range ``r``."""
        return [int(self.owners[r]), *self.replicas(r)]

    def slice(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut sorted keys into per-range segments.

        Returns ``(starts, ranges)``: segment ``j`` is
        ``keys[starts[j]:starts[j+1]]`` (``starts`` has one extra final entry,
        ``len(keys)``) and belongs to range ``ranges[j]``. Empty ranges are
        left out. One ``searchsorted`` over the boundaries: no loop over keys.
        """
        cuts = np.searchsorted(keys, self.bounds, side="left")
        cuts = np.append(cuts, keys.size)
        nonempty = np.flatnonzero(cuts[1:] > cuts[:-1])
        starts = np.append(cuts[nonempty], keys.size)
        return starts, nonempty

    def slice_by_server(self, keys: np.ndarray) -> dict[int, list[tuple[int, int, int]]]:
        """Segments of sorted ``keys`` grouped by owning server.

        ``{server: [(range, start, stop), ...]}``; the Python loop runs over
        ranges (a few per server), never over keys.
        """
        starts, ranges = self.slice(keys)
        out: dict[int, list[tuple[int, int, int]]] = {}
        for j, r in enumerate(ranges.tolist()):
            out.setdefault(int(self.owners[r]), []).append(
                (r, int(starts[j]), int(starts[j + 1]))
            )
        return out
