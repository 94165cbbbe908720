"""Roles from the rank layout: a pure function of (world size, hosts, config).

Rank 0 is the scheduler. ``S`` ranks are servers, the rest workers. Every rank
computes the same layout with no messages. With ``spread_hosts`` and several
hosts, servers are taken from the hosts in turn, so that neighbours on the ring
(owner and replica holders) sit on different hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SCHEDULER = "scheduler"
SERVER = "server"
WORKER = "worker"


class LayoutError(ValueError):
    """The ranks cannot make a job: too few, or no server or no worker."""


# Where launchers tell a process its rank and the job's size before MPI
# starts: Open MPI, PMIx (srun --mpi=pmix: the size is Slurm's), MPICH's
# hydra (and Intel MPI), Slurm's srun.
LAUNCHER_VARIABLES = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                      ("PMIX_RANK", "SLURM_NTASKS"), ("PMI_RANK", "PMI_SIZE"),
                      ("SLURM_PROCID", "SLURM_NTASKS"))


def launcher_rank(env: Mapping[str, str]) -> tuple[int, int | None] | None:
    """``(rank, world size or None)`` as the launcher tells this process
    before MPI starts; None where no launcher said."""
    for rank_var, size_var in LAUNCHER_VARIABLES:
        try:
            rank = int(env[rank_var])
        except (KeyError, ValueError):
            continue
        try:
            return rank, int(env[size_var])
        except (KeyError, ValueError):
            return rank, None
    return None


def likely_role(env: Mapping[str, str], servers: int = 0) -> str | None:
    """The role this process will most likely have, from the launcher's
    variables and a one-host layout, before MPI starts; None where no
    launcher said. A hint only (with several hosts servers may be placed
    elsewhere): the runtime takes the roles from :func:`make_layout` once
    MPI runs."""
    told = launcher_rank(env)
    if told is None or told[1] is None:
        return None
    try:
        return make_layout(told[1], servers).role(told[0])
    except LayoutError:
        return None


def default_servers(world_size: int) -> int:
    """About a third of the non-scheduler ranks serve, at least one."""
    return max(1, (world_size - 1) // 3)


@dataclass(frozen=True)
class Layout:
    world_size: int
    servers: tuple[int, ...]   # MPI ranks of servers, in ring order
    workers: tuple[int, ...]   # MPI ranks of workers
    hosts: tuple[int, ...]     # host id of every rank
    scheduler: int = 0

    def role(self, rank: int) -> str:
        if rank == self.scheduler:
            return SCHEDULER
        return SERVER if rank in self.servers else WORKER

    def describe(self, rank: int) -> str:
        """``"server 1"``, ``"worker 0"``, ``"scheduler"``: a rank's role and index."""
        role = self.role(rank)
        if role == SERVER:
            return f"server {self.servers.index(rank)}"
        if role == WORKER:
            return f"worker {self.workers.index(rank)}"
        return SCHEDULER

    @property
    def num_hosts(self) -> int:
        return len(set(self.hosts))


def make_layout(world_size: int, servers: int = 0, hosts: list[int] | None = None,
                spread_hosts: bool = True) -> Layout:
    """Assign roles. ``servers=0`` picks :func:`default_servers`."""
    if world_size < 3:
        raise LayoutError(
            f"mpips needs at least 3 ranks (1 scheduler, 1 server, 1 worker); "
            f"this job has {world_size}: start it with mpiexec -n 3 or more")
    hosts = list(hosts) if hosts is not None else [0] * world_size
    if len(hosts) != world_size:
        raise LayoutError(f"{len(hosts)} host ids for {world_size} ranks")
    nserv = servers or default_servers(world_size)
    if nserv >= world_size - 1:
        raise LayoutError(
            f"{nserv} servers leave no worker among {world_size} ranks "
            f"(1 scheduler + servers + at least 1 worker): lower layout.servers "
            f"or start more ranks")
    candidates = list(range(1, world_size))
    if spread_hosts and len(set(hosts)) > 1:
        # Deal ranks from the hosts in turn: host A's first, host B's first, ...
        by_host: dict[int, list[int]] = {}
        for r in candidates:
            by_host.setdefault(hosts[r], []).append(r)
        queues = [by_host[h] for h in sorted(by_host)]
        order: list[int] = []
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop(0))
        server_ranks = tuple(order[:nserv])
    else:
        server_ranks = tuple(candidates[:nserv])
    chosen = set(server_ranks)
    worker_ranks = tuple(r for r in candidates if r not in chosen)
    return Layout(world_size, server_ranks, worker_ranks, tuple(hosts))
