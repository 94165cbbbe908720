"""A randomized fault campaign: exact-count jobs (tests/progs/kv_job.py chaos)
under ``mpiexec --with-ft ulfm`` whose servers and workers are SIGKILLed or
SIGSTOPped at random times; each run is classified

  exact           exit 0, every surviving worker found its counts exact
  failed-clearly  non-zero exit with an ``mpips:`` message, within the deadline
                  (expected only when the faults exceed what the job survives:
                  more servers lost than replicas, or every worker)
  inexact         a count was wrong, or the job said done without every
                  surviving worker's check
  hung            no exit within the deadline
  unexpected      a clear failure where the faults were survivable

    python -m tests.chaos_campaign --runs 100 [--seed S]

prints one line per run and the table; ``tests/test_chaos.py`` runs a few
(MPIPS_CHAOS_RUNS, default 6) and fails on any hung, inexact or unexpected.
One MPI job at a time: runs go one after another.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.mpitools import ROOT, mpi_env, mpiexec_cmd

DEADLINE = 120.0  # seconds a run may take before it counts as hung
HEARTBEAT_TIMEOUT = 4.0  # [transport] heartbeat_timeout: a stopped rank's silence
OUTCOMES = ("exact", "failed-clearly", "inexact", "hung", "unexpected")


@dataclass
class Plan:
    """One run: its layout and its faults (rank, signal, seconds after the
    first round)."""

    seed: int
    servers: int
    replication: int
    workers: int
    faults: list[tuple[int, str, float]] = field(default_factory=list)

    @property
    def ranks(self) -> int:
        return 1 + self.servers + self.workers

    @property
    def survivable(self) -> bool:
        """At most ``replication`` servers lost, and a worker left."""
        servers = {r for r, _, _ in self.faults if 1 <= r <= self.servers}
        workers = {r for r, _, _ in self.faults if r > self.servers}
        return len(servers) <= self.replication and len(workers) < self.workers

    def describe(self) -> str:
        faults = ", ".join(f"SIG{sig} {self.role(r)} at {t:.2f} s" for r, sig, t in self.faults)
        return (f"{self.servers} servers k={self.replication} {self.workers} workers; "
                f"{faults}")

    def role(self, rank: int) -> str:
        return f"server rank {rank}" if rank <= self.servers else f"worker rank {rank}"


def make_plan(seed: int) -> Plan:
    """Random layout and faults. Nine runs in ten stay within what the job
    survives (servers up to k, workers all but one); the tenth loses more
    servers than it has replicas and must fail clearly."""
    rng = random.Random(seed)
    servers = rng.choice([3, 4])
    replication = rng.choice([1, 2]) if servers == 4 else 1
    workers = rng.choice([2, 3])
    plan = Plan(seed, servers, replication, workers)
    server_ranks = list(range(1, servers + 1))
    worker_ranks = list(range(servers + 1, servers + 1 + workers))
    if rng.random() < 0.1:  # beyond what replication covers: k + 1 servers at once
        at = rng.uniform(0.2, 2.0)
        for r in rng.sample(server_ranks, replication + 1):
            plan.faults.append((r, "KILL", at))
        return plan
    lost_servers = rng.randint(1, replication)
    lost_workers = rng.choice([0, 0, 1]) if workers > 1 else 0
    victims = rng.sample(server_ranks, lost_servers) + rng.sample(worker_ranks, lost_workers)
    for r in victims:
        plan.faults.append((r, rng.choice(["KILL", "KILL", "STOP"]), rng.uniform(0.1, 2.5)))
    plan.faults.sort(key=lambda f: f[2])
    return plan


def _rank_pids(launcher: int, ranks: set[int]) -> dict[int, int]:
    from mpips.bench.chaos import rank_pid
    return {r: p for r in ranks if (p := rank_pid(launcher, r)) is not None}


def run_plan(plan: Plan, workdir: Path) -> tuple[str, float, str]:
    """Run one plan; returns (outcome, seconds, the output's tail)."""
    out = workdir / f"run-{plan.seed}"
    cmd = mpiexec_cmd(plan.ranks, sys.executable, "tests/progs/kv_job.py", "chaos",
                      f"layout.servers={plan.servers}",
                      f"layout.replication={plan.replication}",
                      f"transport.heartbeat_timeout={HEARTBEAT_TIMEOUT}",
                      "transport.timeout=60", f"job.seed={plan.seed}",
                      f"job.output={out}", ft=True)
    lines: list[str] = []
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=mpi_env(), cwd=ROOT, start_new_session=True)
    first_round = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "round 0 done" in line:
                first_round.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stopped: list[int] = []
    hung = False
    try:
        if first_round.wait(60):
            t0 = time.monotonic()
            pids = _rank_pids(proc.pid, {r for r, _, _ in plan.faults})
            for rank, sig, at in plan.faults:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                pid = pids.get(rank)
                if pid is None:
                    continue
                try:
                    os.kill(pid, getattr(signal, "SIG" + sig))
                    lines.append(f"campaign: SIG{sig} rank {rank} (pid {pid})\n")
                    if sig == "STOP":
                        stopped.append(pid)
                except ProcessLookupError:
                    pass
        try:
            proc.wait(timeout=max(1.0, DEADLINE - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            hung = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in stopped:  # a stopped rank the job did not end would linger
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reader.join(5)
    seconds = time.monotonic() - started
    text = "".join(lines)
    return classify(plan, proc.returncode, text, hung), seconds, text[-3000:]


def classify(plan: Plan, code: int | None, text: str, hung: bool) -> str:
    if hung:
        return "hung"
    if "wrong counts" in text:
        return "inexact"
    if code == 0:
        lost = {r for r, _, _ in plan.faults if r > plan.servers}
        exact = text.count("keys exact")
        # every worker not among the victims checked its counts (a victim
        # signalled after its check may have checked too)
        if exact >= plan.workers - len(lost) and " done in " in text:
            return "exact"
        return "inexact"
    if "mpips:" in text:
        return "unexpected" if plan.survivable else "failed-clearly"
    return "unexpected"


def campaign(runs: int, seed: int, workdir: Path, echo=print) -> Counter:
    tally: Counter = Counter()
    for i in range(runs):
        plan = make_plan(seed + i)
        outcome, seconds, tail = run_plan(plan, workdir)
        tally[outcome] += 1
        echo(f"run {i + 1}/{runs} seed {plan.seed}: {outcome} in {seconds:.1f} s "
             f"({plan.describe()})")
        if outcome in ("inexact", "hung", "unexpected"):
            echo(tail)
    return tally


def table(tally: Counter) -> str:
    total = sum(tally.values())
    rows = [f"| {name} | {tally.get(name, 0)} |" for name in OUTCOMES]
    return "\n".join(["| outcome | runs |", "|---|---|", *rows, f"| all | {total} |"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos_campaign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=int(os.environ.get("MPIPS_CHAOS_RUNS", "20")))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default="runs/chaos")
    args = p.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tally = campaign(args.runs, args.seed, workdir, lambda s: print(s, flush=True))
    print(table(tally))
    return 0 if not (tally["inexact"] or tally["hung"] or tally["unexpected"]) else 1


if __name__ == "__main__":
    sys.exit(main())
