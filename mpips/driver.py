"""Drive mpips jobs from Python (a notebook, a script, a pipeline step).

    import mpips
    result = mpips.run_job("jobs/news20.toml", ranks=4, overrides=["data.epochs=2"])
    result.state, result.output / "metrics.jsonl"

A job's ranks are MPI processes, and an MPI process cannot start twice nor
outlive a failure cleanly, so the job runs as ``python -m mpips run`` in a
child process: the caller's process never loads MPI, and can run job after
job. The output is streamed to ``job.log`` in the job's output folder (and
printed with ``echo``); Ctrl-C (KeyboardInterrupt) in the caller asks the job
to stop as ``mpips run`` does (a checkpoint where one is configured, then
every rank stops), then re-raises.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import load
from .status import read_status


class JobFailed(RuntimeError):
    """``run_job(..., check=True)``: the job ended without saying "done"."""

    def __init__(self, result: JobResult):
        self.result = result
        tail = "".join(result.log.read_text(errors="replace").splitlines(True)[-15:]) \
            if result.log.exists() else ""
        super().__init__(f"mpips job {result.job} ended with exit {result.code} "
                         f"(state {result.state}); the end of {result.log}:\n{tail}")


@dataclass
class JobResult:
    """How a job ended: the launcher's exit code, the job's own status
    (``status.json``: state "done", "failed", "preempted" ..., with its
    fields) and where its output is."""

    job: str
    code: int
    output: Path
    log: Path
    seconds: float
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return str(self.status.get("state", "unknown"))

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.state == "done"


def run_job(job: str | Path, ranks: int | None = None, *, overrides: Sequence[str] = (),
            servers: int | None = None, resume: bool = False, mpi_args: Sequence[str] = (),
            echo: bool = False, check: bool = True, timeout: float | None = None,
            log: str | Path | None = None) -> JobResult:
    """Train the job file ``job`` (any app: ``[job] app``) on ``ranks``
    ranks (default: as ``mpips run`` picks) with ``-o key=value``
    ``overrides``, and wait for its end. With ``check``, a job that did not
    end "done" raises :class:`JobFailed` (its result attached). The job file
    is checked here first: a bad key raises :class:`mpips.ConfigError`
    before any rank starts. ``log``: where the output goes (default
    ``job.log`` in the job's output folder)."""
    cfg = load(str(job), list(overrides))  # ConfigError now, naming key and file
    output = Path(cfg.job.output)
    output.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log is not None else output / "job.log"
    cmd = [sys.executable, "-m", "mpips", "run"]
    if ranks is not None:
        cmd += ["-n", str(ranks)]
    cmd += [f"--mpi-arg={a}" for a in mpi_args]
    cmd += ["train", str(job), *(a for o in overrides for a in ("-o", o))]
    if servers is not None:
        cmd += ["--servers", str(servers)]
    if resume:
        cmd += ["--resume"]
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if echo:
                    print(line, end="", flush=True)
            code = proc.wait(timeout=timeout)
        except BaseException:  # KeyboardInterrupt, a timeout: stop the ranks cleanly
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    result = JobResult(str(job), code, output, log, time.time() - started,
                       read_status(output, since=started) or {})
    if check and not result.ok:
        raise JobFailed(result)
    return result
