"""Who relays to whom across hosts: each host's leader (its lowest rank; the
scheduler on its own host). Heartbeats go up this tree (each host's ranks to
their leader, leaders to the scheduler) and ring changes come down it. A
pure function of the ranks' host ids, so every rank computes the same; no
MPI here (the command line imports what imports this)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class HostTree:
    """The leader of each host (its lowest rank; the scheduler on its own
    host) and the ranks it reports for and relays to."""

    def __init__(self, hosts: list[int], scheduler: int):
        self.scheduler = scheduler
        by_host: dict[int, list[int]] = {}
        for rank, host in enumerate(hosts):
            if rank != scheduler:
                by_host.setdefault(host, []).append(rank)
        self.leader_of: dict[int, int] = {}   # rank -> the rank it beats to
        self.members: dict[int, list[int]] = {}  # leader -> ranks it reports for
        self._direct: tuple[int, list[int]] | None = None
        for host, ranks in by_host.items():
            head = scheduler if host == hosts[scheduler] else ranks[0]
            members = [r for r in ranks if r != head]
            self.members[head] = members
            for r in members:
                self.leader_of[r] = head
            if head != scheduler:
                self.leader_of[head] = scheduler

    def target(self, rank: int) -> int:
        """The rank ``rank`` beats to (and hears ring changes from)."""
        return self.leader_of.get(rank, self.scheduler)

    def direct(self, dead: set[int]) -> list[int]:
        """The live ranks the scheduler sends a broadcast to itself: the
        leaders, its own host's ranks, and the ranks of dead leaders; the
        leaders relay it to the rest. ``dead`` only grows in a job, so the
        answer is kept until it does."""
        if self._direct is None or self._direct[0] != len(dead):
            self._direct = (len(dead), sorted(
                r for r, up in self.leader_of.items()
                if r not in dead and (up == self.scheduler or up in dead)))
        return self._direct[1]

    def direct_for(self, dead: set[int], members: Callable[[int], bool]) -> list[int]:
        """:meth:`direct` narrowed to a broadcast for the ranks ``members``
        accepts: the ranks that are members or lead one."""
        return [r for r in self.direct(dead)
                if members(r) or any(members(m) for m in self.members.get(r, ()))]

    def reported_by(self, leader: int) -> list[int]:
        """The ranks ``leader`` (not the scheduler) reports for."""
        return [] if leader == self.scheduler else self.members.get(leader, [])


class HeardTable:
    """When each rank was last heard (``time.monotonic()``; 0 = never), in
    one float64 array indexed by rank: a beat is one store, a leader's report
    of its host's ranks one vectorised maximum, and finding the silent ranks
    one pass over the array (the scheduler checks ten times an interval)."""

    def __init__(self, tree: HostTree, size: int):
        self.tree = tree
        self.at = np.zeros(size)
        self.received = np.zeros(size, np.int64)  # messages per sender
        self._members = {leader: np.asarray(ranks, np.int64)
                         for leader, ranks in tree.members.items()}

    def beat(self, source: int, now: float) -> None:
        self.at[source] = now
        self.received[source] += 1

    def report(self, leader: int, ages: np.ndarray, now: float) -> None:
        """``leader``'s report: seconds since it heard each rank it reports
        for, in :meth:`HostTree.reported_by` order (negative: never)."""
        members = self._members.get(leader) if leader != self.tree.scheduler else None
        if members is None:
            return
        n = min(members.size, ages.size)
        heard = ages[:n] >= 0
        ranks = members[:n][heard]
        self.at[ranks] = np.maximum(self.at[ranks], now - ages[:n][heard])

    def ages(self, ranks: np.ndarray, now: float) -> np.ndarray:
        """Seconds since each of ``ranks`` was heard (-1: never), float32,
        as a leader reports them."""
        seen = self.at[ranks]
        return np.where(seen > 0, now - seen, -1.0).astype(np.float32)
