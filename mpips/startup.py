"""When this rank reached each step of its start-up, in seconds after the
job's launch: what a job's end prints as "start-up" (slowest rank per step).

Steps, in order: ``spawned`` (the launcher started this process), ``imported``
(Python and the command line's modules), ``job loaded`` (the job file read
and checked, its app imported), ``MPI ready`` (MPI_Init and the van),
``postoffice`` (layout, ring and host tree), then whatever the app marks (the
linear worker: ``first push``). Kept import-free so that the first mark
costs nothing.
"""

from __future__ import annotations

import functools
import os
import time

LAUNCH_ENV = "MPIPS_LAUNCH_TIME"  # `mpips run` exports time.time() at launch

_marks: dict[str, float] = {}


def launched_at() -> float | None:
    """Wall-clock time the job was launched: ``mpips run`` exports it to
    its ranks; otherwise this process's own start (Linux), or None."""
    got = os.environ.get(LAUNCH_ENV)
    if got:
        try:
            return float(got)
        except ValueError:
            pass
    return process_started_at()


@functools.cache  # one value per process: later reads would differ by the 10 ms steps
def process_started_at() -> float | None:
    """Wall-clock time this process was started (Linux /proc), or None."""
    # Its start in clock ticks since boot, against the uptime now (both to
    # 10 ms; /proc/stat's boot time is whole seconds, too coarse for this).
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def mark(step: str) -> None:
    """This rank reached ``step`` now (the first time only)."""
    _marks.setdefault(step, time.time())


def steps() -> dict[str, float]:
    """Seconds after launch at which this rank reached each step, in order
    (empty when the launch time is unknown)."""
    launched = launched_at()
    if launched is None:
        return {}
    out: dict[str, float] = {}
    spawned = process_started_at()
    if spawned is not None and LAUNCH_ENV in os.environ:
        out["spawned"] = round(max(0.0, spawned - launched), 4)
    for step, at in sorted(_marks.items(), key=lambda item: item[1]):
        out[step] = round(at - launched, 4)
    return out


def slowest(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """The latest time any rank reached each step (steps in order of that time)."""
    latest: dict[str, float] = {}
    for got in per_rank:
        for step, at in got.items():
            latest[step] = max(at, latest.get(step, at))
    return dict(sorted(latest.items(), key=lambda item: item[1]))


def line(latest: dict[str, float]) -> str:
    """``start-up (s after launch, slowest rank): spawned 0.05, imported 0.61, ...``"""
    return "start-up (s after launch, slowest rank): " + ", ".join(
        f"{step} {at:.2f}" for step, at in latest.items())
