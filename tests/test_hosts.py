"""Jobs across simulated hosts (network namespaces, tests/netns_hosts.py):
what a lost host does to a job."""

import subprocess
import sys
import threading

import pytest

from tests.mpitools import ROOT, mpi_env, wait_for_output
from tests.netns_hosts import HostsUnavailable, SimulatedHosts

pytestmark = pytest.mark.integration


@pytest.fixture
def hosts(tmp_path):
    sim = SimulatedHosts(("h1", "h2", "h3"), tmp_path / "hosts")
    try:
        sim.start(slots=2)
    except HostsUnavailable as e:
        sim.stop()
        pytest.skip(f"cannot simulate hosts here: {e}")
    yield sim
    sim.stop()


def test_a_lost_host_fails_the_job_with_exit_75_naming_it(hosts, tmp_path):
    """Killing a whole host (its ranks and its Open MPI daemon): the launcher
    then SIGTERMs the survivors. Before, the job took that for a preemption,
    wrote a checkpoint and exited 0, so nothing requeued it. Now: exit 75,
    one message naming the host."""
    cmd = hosts.in_hub(sys.executable, "-m", "mpips", "run", "-n", "6",
                       *(f"--mpi-arg={a}" for a in hosts.launcher_args()),
                       str(ROOT / "jobs" / "demo.toml"), "-o", f"job.output={tmp_path / 'run'}",
                       "-o", "linear.epochs=500", "-o", "layout.servers=2",
                       "-o", "layout.replication=1", "-o", "job.progress_interval=0.5")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=mpi_env(), cwd=ROOT)
    guard = threading.Timer(150, proc.kill)
    guard.start()
    try:
        seen = wait_for_output(proc, "train loss", timeout=90)
        killed = hosts.kill_host("h3")
        rest, _ = proc.communicate(timeout=120)
    finally:
        guard.cancel()
        proc.kill()
    out = "".join(seen) + rest
    assert killed, "no process on h3"
    assert "on 3 host(s)" in out, out[-3000:]
    assert proc.returncode == 75, (proc.returncode, out[-8000:])
    # Open MPI tears the job down at once and exits 0, the ranks' last
    # words lost: mpips run reads the scheduler's status.json
    assert "SIGTERM after host h3 (all its ranks: [2, 5])" in out, out[-4000:]
    assert "stopped on SIGTERM" not in out and "done in" not in out
