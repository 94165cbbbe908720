"""The key ring: uint64 key space cut into contiguous ranges owned by servers.

The key space [0, 2**64) is cut into ``R = servers * virtual_servers`` equal
ranges. Range ``r`` covers ``[bounds[r], bounds[r+1])`` (the last one ends at
2**64, which does not fit in uint64, so it is kept implicit). Ranges are dealt
to servers round-robin in ring order, so with virtual servers each server owns
several segments spread over the ring, as in Chord. The ``k`` successors of a
range's owner on the ring hold its replicas.

Apps hash raw feature ids into the key space with :func:`mpips.keys.mix64`, so
that equal ranges carry equal load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


class RingError(RuntimeError):
    """The ring cannot serve: every holder of some range is dead."""


@dataclass(frozen=True)
class KeyRing:
    """Ranges of the key space, their owners and replica holders.

    ``servers`` are the server ids 0..S-1 in ring order (the layout maps them
    to MPI ranks). ``replication`` is k, the number of copies of each range
    beyond the owner's. Range ``r``'s home is server ``r % S``; its holders
    are taken in a preference order from the home: the successors on the
    ring, one per host at a time (``hosts``: the host id of each server), so
    that the owner and its replicas sit on k + 1 different hosts whenever
    the servers span that many. The owner is the first live server of that
    order, its replicas the next k live ones. When an owner dies, the next
    live one, which holds a replica, becomes the owner: failover is a status
    change. With one host the order is the plain ring order.
    """

    servers: int
    virtual_servers: int = 1
    replication: int = 0
    version: int = 0
    dead: frozenset[int] = frozenset()
    hosts: tuple[int, ...] = ()  # host id of each server; () = all on one host
    bounds: np.ndarray = field(init=False, repr=False, compare=False)
    owners: np.ndarray = field(init=False, repr=False, compare=False)
    prefs: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

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
        if self.hosts and len(self.hosts) != self.servers:
            raise ValueError(f"{len(self.hosts)} host ids for {self.servers} servers")
        nranges = self.servers * self.virtual_servers
        # Equal cuts of [0, 2**64), computed exactly with Python ints.
        bounds = np.array([(r << 64) // nranges for r in range(nranges)], dtype=np.uint64)
        bounds.setflags(write=False)
        prefs = tuple(self._preference(h) for h in range(self.servers))
        object.__setattr__(self, "prefs", prefs)
        owners = np.array([self._live(r)[0] for r in range(nranges)], np.int64)
        owners.setflags(write=False)
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "owners", owners)

    def _preference(self, home: int) -> tuple[int, ...]:
        """Servers in ring order from ``home``, one per host in each round."""
        S = self.servers
        pending = [(home + i) % S for i in range(S)]
        if not self.hosts:
            return tuple(pending)
        order: list[int] = []
        while pending:
            used: set[int] = set()
            rest = []
            for s in pending:
                if self.hosts[s] in used:
                    rest.append(s)
                else:
                    order.append(s)
                    used.add(self.hosts[s])
            pending = rest
        return tuple(order)

    def _live(self, r: int) -> list[int]:
        """Range ``r``'s live servers in its preference order."""
        return [s for s in self.prefs[r % self.servers] if s not in self.dead]

    @property
    def hosts_of_copies(self) -> int:
        """Distinct hosts the owner and replicas of a range can span."""
        return min(self.replication + 1, len(set(self.hosts)) if self.hosts else 1)

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
        """The k live servers after range ``r``'s owner in its preference
        order (fewer when fewer are alive), owner excluded."""
        return self._live(r)[1: 1 + self.replication]

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
