"""The scheduler's watch over ranks: heartbeats, failures MPI reports (ULFM),
and what a loss changes. A dead worker's tasks go back to the queue; a dead
server's ranges move to their first live successor, which holds a replica
(a new ring version, broadcast to every rank), and the servers then repair
the replicas."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ..layout import SERVER, WORKER
from ..postoffice import END_RANK, Command
from ..ring import RingError
from ..status import EXIT_PEERS_LOST
from ..transport import Message, Op

if TYPE_CHECKING:
    from .core import Scheduler


class JobFailed(RuntimeError):
    """The job cannot go on (a failure it cannot recover from)."""

    exit_code = 1


# A SIGTERM this soon after a rank failure is taken for the launcher ending
# the job because of it (Open MPI's does so about 3 s after losing a host's
# daemon), not for a preemption.
LOSS_BEFORE_TERM = 30.0


class PeersLost(JobFailed):
    """The launcher ends the job after ranks or a host were lost."""

    exit_code = EXIT_PEERS_LOST


class Failover:
    def __init__(self, sched: Scheduler):
        self.sched, self.po = sched, sched.po
        po = self.po
        self.hb_timeout = po.cfg.transport.heartbeat_timeout
        # time.monotonic() each rank last sent the scheduler anything (the
        # scheduler's own entry never expires)
        self.last_seen = np.full(po.van.size, time.monotonic())
        self.last_seen[po.layout.scheduler] = np.inf
        self.repairing: set[int] = set()
        self.failed_at: dict[int, float] = {}  # rank -> time.monotonic() of detection
        self._last_check = 0.0
        po.on(Op.PEER_FAILED, self._peer_failed)
        po.on(Op.REPAIRED, self._repaired)
        po.on(Op.HEARTBEAT, lambda msg: None)  # seen by the observer: that is all
        po.observers.append(self._seen)

    def _seen(self, msg: Message) -> None:
        if msg.sender != self.po.layout.scheduler:
            self.last_seen[msg.sender] = time.monotonic()

    def heard(self) -> np.ndarray:
        """When each rank was last heard: its messages, its beats, its
        leader's reports."""
        liveness = self.po.van.liveness
        if liveness is None:
            return self.last_seen
        return np.maximum(self.last_seen, liveness.heard.at)

    def check_heartbeats(self, now: float) -> None:
        if now - self._last_check < 0.1:
            return
        self._last_check = now
        van = self.po.van
        heard = self.heard()
        for rank in np.flatnonzero(now - heard >= self.hb_timeout).tolist():
            # read again: a leader taken for gone in this pass gave its ranks grace
            seen = max(heard[rank], self.last_seen[rank])
            if rank in van.dead or now - seen < self.hb_timeout:
                continue
            if self._leader_late(rank, now, heard):
                continue  # its news come through a leader that fell silent: that first
            who = f"rank {rank} ({self.po.layout.describe(rank)})"
            what = "its heartbeat thread" if self.po.beats_from_thread else "it"
            if not van.fault_tolerant:
                raise JobFailed(f"{who} is silent: {what} sent nothing for {now - seen:.0f} s "
                                "([transport] heartbeat_timeout); the process hangs or "
                                "is stopped")
            self.po.send(rank, Message(op=Op.ABORT, meta=b"declared dead"))
            van.mark_dead(rank, declared=True)
            self._grace_for_reported(rank, now)
            print(f"mpips: {who} is silent: {what} sent nothing for {now - seen:.0f} s: "
                  f"taken for gone; {self._end(rank)}", flush=True)

    def _leader_late(self, rank: int, now: float, heard: np.ndarray) -> bool:
        """Whether ``rank`` beats to a host leader that is alive but has not
        reported for two intervals: the rank's silence may be the leader's
        (a stopped leader's last report is older than its own last beat), so
        the leader is judged first, and its ranks get a timeout more."""
        liveness = self.po.van.liveness
        if liveness is None:
            return False
        leader = liveness.plan.target(rank)
        if leader == self.po.layout.scheduler or leader in self.po.van.dead:
            return False
        return now - heard[leader] > 2 * self.po.heartbeat_interval

    def _grace_for_reported(self, rank: int, now: float) -> None:
        """``rank`` led its host's heartbeats: the ranks it reported for beat
        to the scheduler from now on, and get a full timeout to be heard
        (their silence so far was their leader's)."""
        liveness = self.po.van.liveness
        if liveness is None:
            return
        members = liveness.plan.reported_by(rank)
        self.last_seen[members] = np.maximum(self.last_seen[members], now)

    def _end(self, rank: int) -> str:
        """End a rank taken for gone, so that no survivor's shutdown waits for
        it: here if it shares the scheduler's host, else through a live rank
        of its host. Says what was done."""
        po = self.po
        done = po.end_rank(rank)
        if done is not None:
            po.van.declared_dead.discard(rank)  # ended: MPI will see it fail
            return done
        host = po.layout.hosts[rank]
        peers = [r for r in range(1, po.van.size)
                 if po.layout.hosts[r] == host and r not in po.van.dead]
        if not peers:
            return ("no live rank shares its host to end it: the survivors will leave "
                    "without the final MPI shutdown")
        po.tell(peers[0], Command(END_RANK, {"rank": rank}))
        po.van.declared_dead.discard(rank)
        return f"rank {peers[0]} of its host ends it"

    def _peer_failed(self, msg: Message) -> None:
        rank = msg.aux
        role = self.po.layout.role(rank)
        who = f"rank {rank} ({self.po.layout.describe(rank)})"
        self.failed_at[rank] = time.monotonic()
        self._grace_for_reported(rank, self.failed_at[rank])
        if self.po.host_tree.reported_by(rank):
            # a leader may have died before it relayed the last ring change
            # or barrier release
            if self.po.ring.version:
                self.po.broadcast_ring(self.sched.live(self.po.host_tree.reported_by(rank)))
            self.sched.releases_lost_with(rank)
        self.po.event("detected", failed=rank, role=role)
        print(f"mpips: {who} failed", flush=True)
        if role == WORKER:
            self.sched.tasks.worker_lost(rank, who)
            self.sched.counters.drop(rank)
        elif role == SERVER:
            self._server_failed(rank, who)
        self.sched.release_barriers()

    def loss_before(self, now: float) -> str | None:
        """What was lost shortly before ``now`` (a SIGTERM's arrival): whole
        hosts, or ranks that failed within LOSS_BEFORE_TERM s; None if nothing."""
        po = self.po
        dead = po.van.dead
        hosts = po.layout.hosts
        lost_hosts = sorted({hosts[r] for r in dead
                             if all(q in dead for q in range(po.van.size) if hosts[q] == hosts[r])})
        recent = sorted(r for r, t in self.failed_at.items() if now - t <= LOSS_BEFORE_TERM)
        if not lost_hosts and not recent:
            return None
        names = po.van.hostnames
        parts = []
        for h in lost_hosts:
            ranks = [r for r in range(po.van.size) if hosts[r] == h]
            parts.append(f"host {names[h] if names else h} (all its ranks: {ranks})")
        if recent:
            ago = now - max(self.failed_at[r] for r in recent)
            parts.append(f"rank(s) {recent} failed {ago:.1f} s before")
        return "; ".join(parts)

    def _server_failed(self, rank: int, who: str) -> None:
        po = self.po
        if po.ring.replication == 0:
            raise JobFailed(f"{who} died and [layout] replication = 0: its key ranges are "
                            "lost. Restart with --resume from the last checkpoint, or run "
                            "with replication >= 1 and 3+ servers to survive this")
        server = po.layout.servers.index(rank)
        try:
            ring = po.ring.without(server)
        except RingError as e:
            raise JobFailed(f"{who} died: {e}") from None
        lost = [r for r in range(ring.num_ranges)
                if all(s in ring.dead for s in po.ring.holders(r))]
        if lost:
            raise JobFailed(f"{who} died with the last copy of range(s) {lost}")
        po.set_ring(ring)
        sent = po.broadcast_ring()  # down the host tree: O(hosts) sends here
        self.repairing = set(self.sched.live(po.layout.servers))
        po.event("ring", ring_version=ring.version, dead_servers=sorted(ring.dead),
                 sent=sent)
        print(f"mpips: ring version {ring.version}: the ranges of {who} moved to their "
              "first live successors", flush=True)

    def _repaired(self, msg: Message) -> None:
        if msg.aux != self.po.ring.version:
            return  # a report for an older ring: another failure came since
        self.repairing.discard(msg.sender)
        if not self.repairing:
            self.po.event("repaired", ring_version=msg.aux)
            copies = min(self.po.ring.replication, len(self.po.ring.live_servers) - 1)
            print(f"mpips: ring version {msg.aux}: repaired, every range has {copies} "
                  "replica(s) again", flush=True)
