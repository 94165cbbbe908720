"""Jobs across simulated hosts (network namespaces, tests/netns_hosts.py):
what a lost host does to a job."""

import os
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


def demo_across(hosts, out, act, *overrides: str, timeout: float = 180, job: str = "demo.toml"):
    """The demo (or ``job``) on 6 ranks across the hosts (2 servers, k = 1);
    ``act()`` once training is under way. Returns (exit code, output, act's
    result)."""
    cmd = hosts.in_hub(sys.executable, "-m", "mpips", "run", "-n", "6",
                       *(f"--mpi-arg={a}" for a in hosts.launcher_args()),
                       str(ROOT / "jobs" / job), "-o", f"job.output={out}",
                       "-o", "layout.servers=2", "-o", "layout.replication=1",
                       "-o", "job.progress_interval=0.5",
                       *(a for o in overrides for a in ("-o", o)))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=mpi_env(), cwd=ROOT)
    guard = threading.Timer(timeout + 30, proc.kill)
    guard.start()
    try:
        seen = wait_for_output(proc, "train loss", timeout=90)
        done = act()
        rest, _ = proc.communicate(timeout=timeout)
    finally:
        guard.cancel()
        proc.kill()
    return proc.returncode, "".join(seen) + rest, done


def test_a_lost_host_fails_the_job_with_exit_75_naming_it(hosts, tmp_path):
    """Killing a whole host (its ranks and its Open MPI daemon): the launcher
    then SIGTERMs the survivors. Before, the job took that for a preemption,
    wrote a checkpoint and exited 0, so nothing requeued it. Now: exit 75,
    one message naming the host."""
    code, out, killed = demo_across(hosts, tmp_path / "run", lambda: hosts.kill_host("h3"),
                                    "linear.epochs=500", timeout=120)
    assert killed, "no process on h3"
    assert "on 3 host(s)" in out, out[-3000:]
    assert code == 75, (code, out[-8000:])
    # Open MPI tears the job down at once and exits 0, the ranks' last
    # words lost: mpips run reads the scheduler's status.json
    assert "SIGTERM after host h3 (all its ranks: [2, 5])" in out, out[-4000:]
    assert "stopped on SIGTERM" not in out and "done in" not in out


def _ranks_of(hosts, host: str) -> dict[int, int]:
    """MPI rank -> pid of the rank processes running on ``host``."""
    found = {}
    for pid in hosts.pids(host):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                found[int(item.split(b"=", 1)[1])] = pid
    return found


def _rank_on(hosts, host: str, rank: int) -> int:
    """The pid of MPI rank ``rank`` among the processes of ``host``."""
    pid = _ranks_of(hosts, host).get(rank)
    if pid is None:
        raise LookupError(f"rank {rank} is not on {host}")
    return pid


def test_heartbeats_go_per_host_and_a_stopped_leader_costs_only_itself(hosts, tmp_path):
    """Ranks dealt one per host in turn (h1: 0, 3; h2: 1, 4; h3: 2, 5): ranks 4
    and 5 beat to their host's leader (1, 2), which reports them to the
    scheduler, so the scheduler hears from 1, 2 and 3 alone. SIGSTOP the
    leader that is a server: it is taken for gone and ended, and the rank it
    reported for goes on beating to the scheduler: the job survives the loss
    of the leader alone. The ring change comes down the same tree: the
    scheduler sends it to the other leader (which passes it on), to rank 3
    and to the stopped leader's rank."""
    import json
    import signal
    out = tmp_path / "run"
    victim: list[int] = []

    def stop_the_server_leader() -> None:
        roles = [r["role"] for r in json.loads((out / "layout.json").read_text())["ranks"]]
        victim.append(next(r for r in (1, 2) if roles[r] == "server"))
        os.kill(_rank_on(hosts, f"h{victim[0] + 1}", victim[0]), signal.SIGSTOP)

    code, text, _ = demo_across(hosts, out, stop_the_server_leader, "linear.epochs=10",
                                "transport.heartbeat_timeout=4")
    (leader,) = victim
    member, other = leader + 3, 3 - leader
    assert code == 0, text[-6000:]
    assert f"survived the loss of rank(s) [{leader}]" in text, text[-6000:]
    layout = json.loads((out / "layout.json").read_text())
    assert [r["host"] for r in layout["ranks"]] == [0, 1, 2, 0, 1, 2]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    (beats,) = [e for e in events if e["event"] == "heartbeats"]
    # the stopped leader's rank beat to the scheduler once it was gone; the
    # other leader's rank never did
    assert other + 3 not in beats["senders"], beats
    assert {other, 3, member} <= set(beats["senders"]), beats
    (ring,) = [e for e in events if e["event"] == "ring"]
    assert ring["sent"] == 3, ring  # 4 live ranks had it: the job ended well


def test_a_failing_worker_ends_every_rank_through_the_host_tree(hosts, tmp_path):
    """A partition broken while the job runs: the worker that reads it fails
    and tells the scheduler and the host leaders, which pass the ABORT on.
    Every rank leaves with the failing rank's exit code (no hang: the run is
    under a timeout), and the launcher returns non-zero, with one message
    naming rank, role and cause."""
    data = tmp_path / "ctr"
    subprocess.run([sys.executable, "-m", "data_tools", "synth", "ctr", "--rows", "40000",
                    "--fields", "8", "--vocab", "2000", "--seed", "3",
                    "--rows-per-partition", "2000", "-o", str(data)],
                   check=True, capture_output=True, timeout=120, cwd=ROOT)
    parts = sorted(data.glob("part-*.h5"))

    def break_partitions() -> None:  # one: the worker that reads it next fails
        parts[len(parts) // 2].write_bytes(b"\x89HDF\r\n" + b"\0" * 100)

    code, text, _ = demo_across(
        hosts, tmp_path / "run", break_partitions, f"data.train={data}", "data.test=",
        "data.epochs=1000", "data.minibatch=200", job="ctr.toml", timeout=90)
    assert code not in (0, None), text[-4000:]
    assert "failed: PartitionError" in text or "not a readable HDF5" in text, text[-4000:]
    assert "done in" not in text, text[-4000:]
    assert text.count(" failed: ") == 1, text[-4000:]  # one message, from the failing rank


def test_a_server_killed_on_one_host_costs_nothing_and_the_map_is_the_real_one(hosts,
                                                                               tmp_path):
    """The counter workload (every key ends at the exact number of
    acknowledged pushes) on 6 ranks across the 3 hosts, 3 servers, k = 1:
    layout.json names the host each rank's process really runs on (the
    namespace it was found in), no range has a copy on its owner's host, and
    a server SIGKILLed on one host mid-run costs nothing."""
    import json

    from mpips.layout import make_layout
    victim = make_layout(6, 3, [0, 1, 2, 0, 1, 2]).servers[-1]
    out = tmp_path / "run"
    cmd = hosts.mpiexec(6, "--with-ft", "ulfm", "-x", "MPIPS_TEST_KILL", "-x", "PYTHONPATH",
                        sys.executable, "tests/progs/kv_job.py", "counts", "layout.servers=3",
                        "layout.replication=1", f"job.output={out}", "transport.timeout=30")
    env = dict(mpi_env(), MPIPS_TEST_KILL=f"10:{victim}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    guard = threading.Timer(150, proc.kill)
    guard.start()
    try:
        seen = wait_for_output(proc, "map in layout.json", timeout=90)
        placed = {rank: host for host in hosts.names for rank in _ranks_of(hosts, host)}
        rest, _ = proc.communicate(timeout=120)
    finally:
        guard.cancel()
        proc.kill()
    text = "".join(seen) + rest
    assert proc.returncode == 0, text[-6000:]
    assert text.count("keys exact") == 2, text[-6000:]  # both workers: nothing lost
    assert f"survived the loss of rank(s) [{victim}]" in text, text[-6000:]
    layout = json.loads((out / "layout.json").read_text())
    named = {r["rank"]: r["hostname"] for r in layout["ranks"]}
    assert len(placed) >= 5 and all(named[r] == h for r, h in placed.items()), (placed, named)
    assert len(set(named.values())) == 3
    index = {r["rank"]: r["host"] for r in layout["ranks"]}
    assert all(index[a] == index[b] for a in named for b in named
               if named[a] == named[b])  # the host index and the name agree
    for rng in layout["ranges"]:
        assert len(set(rng["hosts"])) == len(rng["hosts"]) == 2, rng


def test_a_lost_host_leaves_a_checkpoint_the_other_hosts_resume_from(hosts, tmp_path):
    """A whole host killed after the job wrote a checkpoint: exit 75 and one
    message naming the host and that checkpoint; then the job resumed from it
    on the two hosts left (4 ranks) finishes every epoch, each training row
    counted once per epoch across the two runs."""
    import json
    import re
    import time

    from mpips.checkpoint import complete_ids
    data = tmp_path / "ctr"
    subprocess.run([sys.executable, "-m", "data_tools", "synth", "ctr", "--rows", "36000",
                    "--fields", "8", "--vocab", "2000", "--seed", "3",
                    "--rows-per-partition", "2000", "-o", str(data / "all")],
                   check=True, capture_output=True, timeout=120, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "mpips.apps.linear.tools", "split",
                    str(data / "all"), str(data / "train"), str(data / "test"),
                    "--test-partitions", "3"],
                   check=True, capture_output=True, timeout=120, cwd=ROOT)
    rows = json.loads((data / "train" / "manifest.json").read_text())["rows"]
    out = tmp_path / "run"
    root = out / "checkpoints"
    job = [f"data.train={data / 'train'}", f"data.test={data / 'test'}", "data.epochs=30",
           "data.minibatch=200", "checkpoint.every_tasks=30"]

    def kill_h3_after_a_checkpoint() -> bool:
        deadline = time.monotonic() + 60
        while not complete_ids(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(complete_ids(root)) and bool(hosts.kill_host("h3"))

    code, text, killed = demo_across(hosts, out, kill_h3_after_a_checkpoint, *job,
                                     job="ctr.toml", timeout=120)
    assert killed, text[-4000:]
    assert code == 75, (code, text[-6000:])
    said = re.search(r"SIGTERM after host h3 .*continue from checkpoint (\d+) in (\S+) "
                     r"with train --resume", text)
    assert said and said.group(2) == str(root), text[-4000:]
    assert int(said.group(1)) in complete_ids(root)
    two = hosts.workdir / "hostfile-h1-h2"
    two.write_text("h1 slots=2\nh2 slots=2\n")
    args = [str(two) if a == str(hosts.hostfile) else a for a in hosts.launcher_args()]
    cmd = hosts.in_hub(sys.executable, "-m", "mpips", "run", "-n", "4",
                       *(f"--mpi-arg={a}" for a in args), str(ROOT / "jobs" / "ctr.toml"),
                       "--resume", "-o", f"job.output={out}", "-o", "layout.servers=1",
                       *(a for o in job for a in ("-o", o)))
    done = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), cwd=ROOT,
                          timeout=240)
    again = done.stdout + done.stderr
    assert done.returncode == 0, again[-6000:]
    assert f"resumed from checkpoint {said.group(1)}" in again, again[-4000:]
    assert "on 2 host(s)" in again and "done in" in again, again[-4000:]
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final.get("final") and final["examples"] == 30 * rows, (final, rows)
