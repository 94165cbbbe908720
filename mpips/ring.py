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

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

# Rings of at most this many ranges cut a request's keys by a loop over the
# ranges (the common case: a few ranges per server, a few servers).
FEW_RANGES = 64


def equal_cuts(n: int) -> np.ndarray:
    """``floor(r * 2**64 / n)`` for r < n, exactly, in uint64: r * q + r * m // n
    with 2**64 = q * n + m (r * q < 2**64 and r * m < n**2 < 2**64)."""
    if n == 1:
        return np.zeros(1, np.uint64)
    if n >= 1 << 32:
        raise ValueError(f"{n} ranges: the ring holds fewer than 2**32")
    q, m = divmod(1 << 64, n)
    r = np.arange(n, dtype=np.uint64)
    cuts = r * np.uint64(q) + r * np.uint64(m) // np.uint64(n)
    cuts.setflags(write=False)
    return cuts


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
    the servers span that many. With no server dead, the owner is the first
    server of that order, its replicas the next k. Deaths are applied in the
    order they happened (``deaths``, as the scheduler broadcasts them): a
    dead holder leaves the list, the first holder left (which has a copy)
    owns the range, so failover is a status change, and the list is filled
    up again from the preference order with a live server of a host the
    holders do not use yet (any live server if none is left): replicas stay
    off their owner's host, after any number of failures, while the live
    servers span k + 1 hosts. With one host the order is the plain ring order.
    """

    servers: int
    virtual_servers: int = 1
    replication: int = 0
    version: int = 0
    dead: frozenset[int] = frozenset()
    hosts: tuple[int, ...] = ()  # host id of each server; () = all on one host
    deaths: tuple[int, ...] = ()  # the dead servers in the order they died
    bounds: np.ndarray = field(init=False, repr=False, compare=False)
    owners: np.ndarray = field(init=False, repr=False, compare=False)
    _holders: np.ndarray = field(init=False, repr=False, compare=False)
    _owner_list: list[int] = field(init=False, repr=False, compare=False)  # owners, as ints

    def __post_init__(self) -> None:
        if self.servers < 1:
            raise ValueError("the ring needs at least one server")
        if self.virtual_servers < 1:
            raise ValueError("virtual_servers must be at least 1")
        if not 0 <= self.replication < self.servers:
            raise ValueError(
                f"replication k={self.replication} needs k < servers={self.servers}"
            )
        if not self.deaths and self.dead:  # dead given alone: a canonical order
            object.__setattr__(self, "deaths", tuple(sorted(self.dead)))
        if set(self.deaths) != set(self.dead):
            object.__setattr__(self, "dead", frozenset(self.deaths) | self.dead)
            object.__setattr__(self, "deaths", tuple(dict.fromkeys(
                [*self.deaths, *sorted(self.dead - set(self.deaths))])))
        if len(self.dead) >= self.servers:
            raise RingError("every server of the ring is dead")
        if self.hosts and len(self.hosts) != self.servers:
            raise ValueError(f"{len(self.hosts)} host ids for {self.servers} servers")
        nranges = self.servers * self.virtual_servers
        object.__setattr__(self, "bounds", equal_cuts(nranges))
        holders = self._holders_by_home()
        holders.setflags(write=False)
        owners = holders[np.arange(nranges) % self.servers, 0]
        owners.setflags(write=False)
        object.__setattr__(self, "_holders", holders)
        object.__setattr__(self, "owners", owners)
        object.__setattr__(self, "_owner_list", owners.tolist())

    def _preference(self, home: int, hosts_in_round: list[int]) -> Iterator[int]:
        """Servers in ring order from ``home``, one per host in each round
        (every server once, dead ones too: failover keeps this order).
        ``hosts_in_round[j]``: the hosts with more than j servers, so round
        j ends once that many have given one. Lazy: the first few servers
        cost a few steps, not the whole ring."""
        S, hosts = self.servers, self.hosts
        if len(hosts_in_round) == 0 or hosts_in_round[0] <= 1:
            yield from ((home + i) % S for i in range(S))
            return
        taken: set[int] = set()
        for needed in hosts_in_round:
            used: set[int] = set()
            for i in range(S):
                s = (home + i) % S
                if s in taken or hosts[s] in used:
                    continue
                taken.add(s)
                used.add(hosts[s])
                yield s
                if len(used) == needed:
                    break  # every host with a server left in this round has given one

    def _holders_by_home(self) -> np.ndarray:
        """For each home server, its holders (owner first; -1 where fewer
        are alive): the first k + 1 servers in preference order, then each
        death in turn (see the class)."""
        want = self.replication + 1
        per_host = np.bincount(np.asarray(self.hosts, np.int64)) if self.hosts else \
            np.zeros(0, np.int64)
        per_host = per_host[per_host > 0]
        hosts_in_round = [int((per_host > j).sum()) for j in range(int(per_host.max(initial=0)))]
        out = self._first_holders(want, hosts_in_round)
        gone: set[int] = set()
        for d in self.deaths:
            gone.add(d)
            for home in np.flatnonzero((out == d).any(axis=1)).tolist():
                row = [int(s) for s in out[home] if s >= 0 and s != d]
                row = self._refill(home, row, gone, want, hosts_in_round)
                out[home] = -1
                out[home, :len(row)] = row
        return out

    def _first_holders(self, want: int, hosts_in_round: list[int]) -> np.ndarray:
        """The first ``want`` servers of every home's preference order, all
        homes at once: each step looks one server further along the ring for
        every home still short of holders (the walks are a few steps long:
        until the round has met enough hosts)."""
        S = self.servers
        homes = np.arange(S, dtype=np.int64)
        if not hosts_in_round or hosts_in_round[0] <= 1:  # one host: plain ring order
            return (homes[:, None] + np.arange(want)) % S
        hosts = np.asarray(self.hosts, np.int64)
        needed = np.asarray(hosts_in_round, np.int64)
        out = np.full((S, want), -1, np.int64)
        count = np.zeros(S, np.int64)        # holders found
        step = np.zeros(S, np.int64)         # how far along the ring this round
        rnd = np.zeros(S, np.int64)          # the round (one server per host each)
        round_start = np.zeros(S, np.int64)  # the first holder found in this round
        used_round = np.zeros(S, np.int64)   # hosts met in this round
        cols = np.arange(want)
        active = homes
        while active.size:
            cand = (active + step[active]) % S
            picks = out[active]
            taken = (picks == cand[:, None]).any(axis=1)
            in_round = (cols >= round_start[active, None]) & (picks >= 0)
            host_used = (in_round & (hosts[np.maximum(picks, 0)] == hosts[cand][:, None])
                         ).any(axis=1)
            ok = ~taken & ~host_used
            rows = active[ok]
            out[rows, count[rows]] = cand[ok]
            count[rows] += 1
            used_round[rows] += 1
            step[active[~ok]] += 1
            ended = rows[used_round[rows] == needed[rnd[rows]]]
            step[rows] += 1
            step[ended] = 0
            rnd[ended] += 1
            used_round[ended] = 0
            round_start[ended] = count[ended]
            active = active[count[active] < want]
        return out

    def _refill(self, home: int, row: list[int], gone: set[int], want: int,
                hosts_in_round: list[int]) -> list[int]:
        """``row`` filled up to ``want`` live servers from ``home``'s
        preference order, each from a host the row does not use yet where
        one is left, else the next live one."""
        while len(row) < want:
            used = {self.hosts[s] for s in row} if self.hosts else set()
            fallback = None
            for s in self._preference(home, hosts_in_round):
                if s in gone or s in row:
                    continue
                if not self.hosts or self.hosts[s] not in used:
                    row.append(s)
                    break
                if fallback is None:
                    fallback = s
            else:
                if fallback is None:
                    break  # fewer live servers than copies
                row.append(fallback)
        return row

    @property
    def hosts_of_copies(self) -> int:
        """Distinct hosts the owner and replicas of a range can span."""
        return min(self.replication + 1, len(set(self.hosts)) if self.hosts else 1)

    @property
    def live_servers(self) -> list[int]:
        return [s for s in range(self.servers) if s not in self.dead]

    def without(self, server: int) -> KeyRing:
        """The ring after ``server`` died: its ranges move to live successors."""
        return replace(self, version=self.version + 1, dead=self.dead | {server},
                       deaths=(*self.deaths, server))

    def without_all(self, deaths: list[int], version: int) -> KeyRing:
        """The ring with ``deaths`` gone, in that order, at ``version`` (as
        the scheduler broadcasts it: a rank that missed a version gets the
        same ring)."""
        return replace(self, version=version, dead=frozenset(deaths), deaths=tuple(deaths))

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
        return [int(s) for s in self._holders[r % self.servers, 1:] if s >= 0]

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

    def segments(self, keys: np.ndarray) -> list[tuple[int, int, int]]:
        """:meth:`slice` as a list of ``(range, start, stop)``, non-empty only.
        A ring of few ranges cuts by one ``searchsorted`` and a loop over its
        ranges: the numpy passes of :meth:`slice` cost a small request more."""
        if self.bounds.size > FEW_RANGES:
            starts, ranges = self.slice(keys)
            bounds = starts.tolist()
            return [(r, bounds[j], bounds[j + 1]) for j, r in enumerate(ranges.tolist())]
        out, a = [], 0
        for r, b in enumerate([*np.searchsorted(keys, self.bounds[1:]).tolist(), keys.size]):
            if b > a:
                out.append((r, a, b))
            a = b
        return out

    def slice_by_server(self, keys: np.ndarray) -> dict[int, list[tuple[int, int, int]]]:
        """Segments of sorted ``keys`` grouped by owning server.

        ``{server: [(range, start, stop), ...]}``; the Python loop runs over
        ranges (a few per server), never over keys.
        """
        out: dict[int, list[tuple[int, int, int]]] = {}
        owners = self._owner_list
        for seg in self.segments(keys):
            out.setdefault(owners[seg[0]], []).append(seg)
        return out
        starts, ranges = self.slice(keys)
        for j, r in enumerate(ranges.tolist()):
            out.setdefault(int(self.owners[r]), []).append(
                (r, int(starts[j]), int(starts[j + 1]))
            )
        return out
