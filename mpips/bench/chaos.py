"""Kill a rank of a running job, for recovery benchmarks.

    python -m mpips.bench.chaos --rank 2 --after "inserts" -- \\
        mpiexec --with-ft ulfm -n 6 python -m mpips train jobs/sketch.toml ...

runs the command, passes its output through, and once a line containing
``--after`` appears (plus ``--delay`` seconds) SIGKILLs the process of MPI
rank ``--rank`` among the launcher's descendants (Linux /proc). It prints
``chaos: killed rank R (pid P) at T`` with T in seconds since the epoch, on
the same clock as the job's ``events.jsonl``, and with ``--events FILE``
also how long after the kill each recovery event came. It exits with the
command's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    return out


def rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of MPI rank ``rank`` among the descendants of ``launcher_pid``
    (the command may wrap mpiexec in ``timeout`` and the like)."""
    parents = _parents()
    for pid in parents:
        up, hops = pid, 0
        while up in parents and up != launcher_pid and hops < 16:
            up, hops = parents[up], hops + 1
        if up != launcher_pid or pid == launcher_pid:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env \
                or f"PMI_RANK={rank}".encode() in env:
            return pid
    return None


def report_events(path: str, killed: float) -> None:
    if not os.path.exists(path):
        print(f"chaos: no {path}: the job logged no recovery events")
        return
    with open(path) as f:
        events = [json.loads(line) for line in f if line.strip()]
    firsts: dict[str, float] = {}
    for e in events:
        if e["time"] >= killed and e["event"] not in firsts:
            firsts[e["event"]] = e["time"] - killed
    for name in ("detected", "ring", "first_served", "repaired"):
        if name in firsts:
            print(f"chaos: {name} {firsts[name] * 1000:.1f} ms after the kill", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpips.bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, required=True, help="MPI rank to SIGKILL")
    p.add_argument("--after", required=True, help="kill once a line contains this text")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to wait after the line")
    p.add_argument("--events", help="the job's events.jsonl: print recovery times")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command after --")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if killed is None and args.after in line:
            time.sleep(args.delay)
            pid = rank_pid(proc.pid, args.rank)
            if pid is None:
                print(f"chaos: rank {args.rank} not found among the launcher's children",
                      flush=True)
                killed = -1.0
                continue
            os.kill(pid, signal.SIGKILL)
            killed = time.time()
            print(f"chaos: killed rank {args.rank} (pid {pid}) at {killed:.6f}", flush=True)
    code = proc.wait()
    if killed and killed > 0 and args.events:
        report_events(args.events, killed)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
