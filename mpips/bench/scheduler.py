"""``bench scheduler``: the scheduler's own code at many ranks, without MPI.

One process plays rank 0 of a job of N ranks (hosts of ``--ranks-per-host``
ranks, a quarter of the ranks servers unless ``--servers`` says otherwise,
replication 2). The real Postoffice, Scheduler, task desk, failover, ring
and host tree run; only the van is replaced by one that counts what the
scheduler sends (messages and bytes) instead of sending it. Each event is
driven as the other ranks would drive it, and timed:

    barrier      every other rank arrives at one barrier; its release
    task         one task request (a worker reports its task done and asks
                 for the next), per request: as many requests as partitions
                 (2 per worker), under ``--policy`` (sequential: each
                 request waits for the tasks before it, so most workers wait)
    heartbeats   one heartbeat interval: each host leader's report, the
                 scheduler's own host's beats, and the ten checks for silent
                 ranks the scheduler makes per interval
    ring change  a server dies: the failover path (new ring, broadcast,
                 barriers re-checked)
    progress     one progress line (the workers' counters, summed as reports come)
    abort        the ABORT messages one failing rank sends

Figures are the median of ``--repeat`` runs (min and max beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..app import App, Table
from ..config import load
from ..data.queue import PartitionQueue
from ..postoffice import ALL, Postoffice
from ..scheduler import Scheduler
from ..transport.hosts import HeardTable, HostTree
from ..transport.message import Message, Op, encode
from . import append_jsonl


class CountingVan:
    """A rank's van (rank 0's here), with sends counted instead of made
    (and kept in :attr:`sent` if ``keep``: the tests read them)."""

    fault_tolerant = True

    def __init__(self, size: int, hosts: list[int], rank: int = 0, keep: bool = False):
        self.rank, self.size = rank, size
        self._hosts = hosts
        self.sent: list[tuple[int, Message]] | None = [] if keep else None
        self.dead: set[int] = set()
        self.declared_dead: set[int] = set()
        self.pids: list[int] = []
        self.hostnames: list[str] = []
        self.liveness: CountedLiveness | None = None
        self.messages = 0
        self.bytes = 0
        self.tasks: dict[int, dict[str, Any] | None] = {}  # rank -> the last task sent

    def host_ids(self) -> list[int]:
        return list(self._hosts)

    def start_liveness(self, scheduler: int, interval: float,
                       hosts: list[int] | None = None) -> bool:
        self.liveness = CountedLiveness(HostTree(hosts or self._hosts, scheduler), self.size)
        return True

    def send(self, dest: int, msg: Message, defer: bool = False) -> None:
        if self.sent is not None:
            self.sent.append((dest, msg))
        if msg.op == Op.TASK:  # what the worker reports back when it is done
            self.tasks[dest] = msg.json()
        self.messages += 1
        self.bytes += sum(p.nbytes for p in encode(msg))  # the van encodes each send

    def mark_dead(self, rank: int, declared: bool = False) -> None:
        self.dead.add(rank)

    def abort_all(self, text: str, code: int = 1, grace: float = 1.0,
                  ranks: list[int] | None = None, flags: int = 0) -> None:
        for r in range(self.size) if ranks is None else ranks:
            if r != self.rank:
                self.send(r, Message(op=Op.ABORT, flags=flags, aux=code, meta=text.encode()))

    @staticmethod
    def library() -> str:
        return "no MPI (bench scheduler)"


class CountedLiveness:
    """The scheduler's side of the heartbeats, fed by the benchmark."""

    def __init__(self, plan: HostTree, size: int):
        self.plan = plan
        self.heard = HeardTable(plan, size)

    def peer_failed(self, rank: int) -> None:
        pass


class _BenchApp(App):
    name = "bench-scheduler"

    def __init__(self, cfg, workers: int, epochs: int):
        super().__init__(cfg)
        self.workers, self.epochs = workers, epochs

    def tables(self) -> list[Table]:
        return [Table("w", 1)]

    def work_queue(self) -> PartitionQueue:
        names = [f"part-{i:06d}" for i in range(2 * self.workers)]
        return PartitionQueue(names, epochs=self.epochs)


def _message(op: int, sender: int, **fields: Any) -> Message:
    msg = Message(op=op, **fields)
    msg.sender = sender
    return msg


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class SchedulerBench:
    """A scheduler of ``ranks`` ranks with nothing but its van replaced."""

    def __init__(self, ranks: int, ranks_per_host: int, servers: int, output: str,
                 epochs: int = 8, policy: str = "eventual"):
        hosts = [r - r % ranks_per_host for r in range(ranks)]
        self.cfg = load(None, [f"layout.servers={servers}", "layout.replication=2",
                               f"job.output={output!r}", f"consistency.policy={policy!r}",
                               "consistency.log_tasks=false"])
        self.van = CountingVan(ranks, hosts)
        self.po = Postoffice(self.cfg, [Table("w", 1)], van=self.van)
        with contextlib.redirect_stdout(io.StringIO()):
            self.sched = Scheduler(self.po, _BenchApp(self.cfg, len(self.po.layout.workers),
                                                     epochs))
        self.ranks = ranks
        self._barrier_id = 0
        self._asked = False

    def _sent(self, fn: Callable[[], Any]) -> tuple[float, int, int]:
        m0, b0 = self.van.messages, self.van.bytes
        with contextlib.redirect_stdout(io.StringIO()):
            seconds = _timed(fn)
        return seconds, self.van.messages - m0, self.van.bytes - b0

    def barrier(self) -> tuple[float, int, int]:
        bid, self._barrier_id = self._barrier_id, self._barrier_id + 1
        arrivals = [_message(Op.BARRIER, r, flags=ALL, aux=bid) for r in range(1, self.ranks)
                    if r not in self.van.dead]

        def run() -> None:
            for msg in arrivals:
                self.po.dispatch(msg)
        return self._sent(run)

    def tasks(self, count: int) -> tuple[float, int, int]:
        """``count`` task requests, workers in turn, each reporting the task
        it held (if any) and asking for the next; seconds per request."""
        workers = self.sched.live(self.po.layout.workers)
        if not self._asked:  # every worker asks once (outside the timing)
            for w in workers:
                self.po.dispatch(_message(Op.TASK_REQ, w, meta=Message.jmeta(
                    {"done": [], "want": True})))
            self._asked = True
        tasks = self.van.tasks
        requests, seconds = 0, 0.0
        m0, b0 = self.van.messages, self.van.bytes
        with contextlib.redirect_stdout(io.StringIO()):
            for i in range(count):
                w = workers[i % len(workers)]
                if w not in tasks:
                    continue  # asked and not answered yet: still waiting
                done = tasks.pop(w)
                msg = _message(Op.TASK_REQ, w, meta=Message.jmeta(
                    {"done": [done] if done else [], "want": True}))
                t = time.perf_counter()
                self.po.dispatch(msg)
                seconds += time.perf_counter() - t
                requests += 1
        return seconds / max(requests, 1), self.van.messages - m0, self.van.bytes - b0

    def heartbeat_interval(self) -> tuple[float, int, int]:
        """One interval's reports and beats, and the ten checks of it."""
        live = self.van.liveness
        tree = live.plan
        now = time.monotonic()
        reports = [(leader, np.full(len(tree.reported_by(leader)), 0.5, np.float32))
                   for leader in tree.members if leader != tree.scheduler]
        direct = [r for r, up in tree.leader_of.items() if up == tree.scheduler]
        failover = self.sched.failover

        def run() -> None:
            for leader, ages in reports:
                live.heard.report(leader, ages, now)
            for r in direct:
                live.heard.beat(r, now)
            for i in range(10):
                failover._last_check = 0.0
                failover.check_heartbeats(now + i * 0.1)
        seconds = _timed(run)
        return seconds, len(reports) + len(set(direct) - set(tree.members)), 0

    def ring_change(self, server_index: int) -> tuple[float, int, int]:
        rank = self.po.layout.servers[server_index]

        def run() -> None:
            self.van.mark_dead(rank)
            self.po.dispatch(_message(Op.PEER_FAILED, rank, aux=rank))
        return self._sent(run)

    def progress_line(self) -> tuple[float, int, int]:
        for w in self.po.layout.workers:
            self.sched.counters.set(w, {"examples": 1000.0, "batches": 10.0, "loss": 0.5,
                                        "pushed_keys": 1e5, "pulled_keys": 1e5, "tasks": 3.0})
        return self._sent(lambda: self.sched.print_progress(10.0))

    def abort(self) -> tuple[float, int, int]:
        """What one failing worker sends: measured on the scheduler's own
        code path for it (the same as any rank's)."""
        return self._sent(lambda: self.po.abort_job("bench", 1))


def _stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks", default="100,1000,10000",
                   help="comma-separated job sizes (default 100,1000,10000)")
    p.add_argument("--ranks-per-host", type=int, default=8)
    p.add_argument("--servers", type=float, default=0.25,
                   help="servers: a fraction of the ranks (< 1) or a count (default 0.25)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--policy", default="eventual",
                   help="[consistency] policy of the task hand-out (default eventual)")
    p.add_argument("--json", help="append one JSON line per size to this file")


def run(args: argparse.Namespace) -> int:
    import tempfile
    print(f"bench scheduler: one process, no MPI; hosts of {args.ranks_per_host} ranks, "
          f"replication 2; tasks under {args.policy}; median of {args.repeat} runs "
          "(min-max); msgs = what the scheduler sends for the event", flush=True)
    head = (f"{'ranks':>6} {'servers':>7} {'hosts':>5} | {'barrier ms':>17} {'msgs':>5} | "
            f"{'task us':>15} | {'heartbeat interval ms':>21} {'msgs':>5} | "
            f"{'ring change ms':>17} {'msgs':>5} | {'progress ms':>11} | abort msgs")
    print(head)
    for ranks in [int(x) for x in args.ranks.split(",")]:
        servers = int(args.servers * ranks) if args.servers < 1 else int(args.servers)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            b = SchedulerBench(ranks, args.ranks_per_host, max(servers, 3), out,
                               epochs=args.repeat + 2, policy=args.policy)
            start = time.perf_counter() - t0
            barrier = [b.barrier() for _ in range(args.repeat)]
            task = [b.tasks(2 * len(b.po.layout.workers)) for _ in range(args.repeat)]
            beats = [b.heartbeat_interval() for _ in range(args.repeat)]
            ring = [b.ring_change(i * 7 % len(b.po.layout.servers))
                    for i in range(args.repeat)]
            progress = [b.progress_line() for _ in range(args.repeat)]
            abort = b.abort()
        ms = [1e3 * x[0] for x in barrier]
        us = [1e6 * x[0] for x in task]
        hb = [1e3 * x[0] for x in beats]
        rc = [1e3 * x[0] for x in ring]
        pl = [1e3 * x[0] for x in progress]

        def f(v: list[float], width: int, digits: int = 2) -> str:
            lo, mid, hi = _stats(v)
            return f"{mid:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})".rjust(width)
        print(f"{ranks:>6} {len(b.po.layout.servers):>7} {b.po.layout.num_hosts:>5} | "
              f"{f(ms, 17)} {barrier[0][1]:>5} | {f(us, 15, 1)} | {f(hb, 21)} "
              f"{beats[0][1]:>5} | {f(rc, 17)} {ring[0][1]:>5} | "
              f"{statistics.median(pl):>11.2f} | {abort[1]}", flush=True)
        if args.json:
            append_jsonl(args.json, [{
                "bench": "scheduler", "ranks": ranks, "servers": len(b.po.layout.servers),
                "hosts": b.po.layout.num_hosts, "setup_s": start,
                "barrier_ms": _stats(ms), "barrier_messages": barrier[0][1],
                "barrier_bytes": barrier[0][2], "task_us": _stats(us),
                "heartbeat_interval_ms": _stats(hb), "heartbeat_messages": beats[0][1],
                "ring_change_ms": _stats(rc), "ring_change_messages": ring[0][1],
                "progress_ms": _stats(pl), "abort_messages": abort[1]}])
    return 0
