"""Who relays to whom across hosts: each host's leader (its lowest rank; the
scheduler on its own host). Heartbeats go up this tree (each host's ranks to
their leader, leaders to the scheduler) and ring changes come down it. A
pure function of the ranks' host ids, so every rank computes the same; no
MPI here (the command line imports what imports this)."""

from __future__ import annotations


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
        leaders relay it to the rest."""
        return sorted(r for r, up in self.leader_of.items()
                      if r not in dead and (up == self.scheduler or up in dead))

    def reported_by(self, leader: int) -> list[int]:
        """The ranks ``leader`` (not the scheduler) reports for."""
        return [] if leader == self.scheduler else self.members.get(leader, [])
