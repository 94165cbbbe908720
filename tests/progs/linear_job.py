"""The linear app under mpiexec, with a failure injected at the job's end:
``python linear_job.py JOB [-o key=value ...]``.

MPIPS_TEST_DIE_AT_STOP=R: server rank R dies (SIGKILL) when the job ends,
after the workers are done and before it saves its share of the model: its
ranges are then in no shard, and only their new owners (which held
replicas) can save them.
"""

from __future__ import annotations

import os
import signal
import sys

from mpips import config
from mpips.apps.linear.app import LinearApp
from mpips.runtime import run


class DiesAtStop(LinearApp):
    def on_server_stop(self, po, server):
        if str(po.rank) == os.environ.get("MPIPS_TEST_DIE_AT_STOP"):
            print(f"server rank {po.rank} dies at the job's end", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().on_server_stop(po, server)


if __name__ == "__main__":
    job, overrides = sys.argv[1], [a for a in sys.argv[2:] if a != "-o"]
    cfg = config.load(job, overrides)
    run(cfg, DiesAtStop(cfg))
