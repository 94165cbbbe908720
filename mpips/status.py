"""``status.json`` in a job's output folder: what the scheduler last knew
about the job (running, stopping, done, preempted, failed), written
atomically at each change.

The launcher's own exit status cannot always say it: when Open MPI loses a
host's daemon it tears the job down, loses the ranks' last messages and
exits 0. ``mpips run`` therefore reads this file after the launcher exits
and returns failure (75: requeue, resume) for a job that never said "done".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUS = "status.json"
# Exit status of a job the launcher ended after ranks or a host were lost
# (EX_TEMPFAIL): a failure, not a finished or preempted job; slurm/train.sbatch
# requeues it and the next run resumes from the last checkpoint.
EXIT_PEERS_LOST = 75
# What a job that finished or stopped on purpose says; anything else, or no
# file from this run, means it was lost.
ENDED_WELL = ("done", "preempted")


def status_path(output: str | Path) -> Path:
    return Path(output) / STATUS


def write_status(output: str | Path, state: str, **fields: Any) -> None:
    """Replace the job's status (temporary file, rename); a failure to write
    it is said, never raised: the job matters more than its status file."""
    path = status_path(output)
    record = {"state": state, "time": time.time(), "pid": os.getpid(), **fields}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{STATUS}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(record) + "\n")
        os.replace(temp, path)
    except OSError as e:
        print(f"mpips: cannot write {path}: {e}", flush=True)


def read_status(output: str | Path, since: float = 0.0) -> dict[str, Any] | None:
    """The status written at or after ``since`` (time.time()), or None."""
    try:
        record = json.loads(status_path(output).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("time", 0) < since:
        return None
    return record
