"""A job of 64 ranks on this 2-core machine: it starts, trains, survives a
server killed mid-run and ends with the model's right AUC."""

import json
import os
import re
import signal

import pytest

from tests.mpitools import rank_pid, start_mpi, wait_for_output

pytestmark = pytest.mark.integration

PLANTED_AUC_NEAR = 0.01  # the demo data's planted model scores AUC 0.8253 on its test rows


def test_64_ranks_survive_a_server_killed_mid_run_with_the_right_auc(tmp_path):
    out = tmp_path / "run"
    proc = start_mpi(64, "python", "-m", "mpips", "train", "jobs/demo.toml",
                     "-o", "layout.servers=8", "-o", "layout.replication=1",
                     "-o", "linear.synthetic_rows=20000", "-o", "linear.epochs=4",
                     "-o", f"job.output={out}", "-o", "job.progress_interval=1",
                     "-o", "transport.timeout=300", ft=True,
                     env={"OMPI_MCA_mpi_yield_when_idle": "1"})
    try:
        lines = wait_for_output(proc, "train loss", timeout=400)
        layout = json.loads((out / "layout.json").read_text())
        servers = [r["rank"] for r in layout["ranks"] if r["role"] == "server"]
        assert len(servers) == 8 and len(layout["ranks"]) == 64
        victim = servers[len(servers) // 2]
        os.kill(rank_pid(proc, victim), signal.SIGKILL)
        rest, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text[-5000:]
    assert f"survived the loss of rank(s) [{victim}]" in text, text[-5000:]
    assert "repaired" in text, text[-5000:]
    planted = float(re.search(r"planted model.*AUC ([0-9.]+)", text).group(1))
    auc = float(re.search(r"\ntest: .*AUC ([0-9.]+)", text).group(1))
    print(f"64 ranks, server rank {victim} killed: test AUC {auc:.4f} (planted model "
          f"{planted:.4f})")
    assert abs(auc - planted) <= PLANTED_AUC_NEAR, text[-3000:]
