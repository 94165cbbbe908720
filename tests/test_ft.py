"""Failures for real: ranks are SIGKILLed under mpiexec --with-ft ulfm.

The counter workload (tests/progs/kv_job.py counts) checks that every key's
value equals the exact number of pushes, all of which are acknowledged:
nothing lost, nothing counted twice.
"""

import json
import os
import re

import pytest

from tests.mpitools import run_mpi

pytestmark = pytest.mark.integration


def counts_run(tmp_path, n, servers, k, kill, virtual=1, chunk=0, coalesce=0, keyset=False):
    env = {"MPIPS_TEST_KILL": kill, **({"MPIPS_TEST_KEYSET": "1"} if keyset else {})}
    proc = run_mpi(n, "python", "tests/progs/kv_job.py", "counts",
                   f"layout.servers={servers}", f"layout.replication={k}",
                   f"layout.virtual_servers={virtual}", f"job.output={tmp_path}",
                   f"kv.chunk_keys={chunk}", f"kv.coalesce_bytes={coalesce}",
                   "transport.timeout=30", ft=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.count("keys exact") == n - 1 - servers, out[-4000:]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return out, events


def test_server_killed_mid_run_loses_nothing(tmp_path):
    # requests of 2000 keys in chunks of 1024: a resent chunk is recognised by
    # its (request, chunk) id, and the other chunk of its request still applies
    out, events = counts_run(tmp_path, 6, servers=3, k=1, kill="10:2", chunk=1024)
    assert "survived the loss of rank(s) [2]" in out
    names = [e["event"] for e in events]
    assert names.count("detected") == 1 and "first_served" in names and "repaired" in names


def test_key_sets_survive_a_server_killed_mid_run(tmp_path):
    # requests by position to a dead server are resent by keys, and the sets
    # are registered again with the new owners under the new ring
    out, events = counts_run(tmp_path, 6, servers=3, k=1, kill="10:2", keyset=True)
    assert "survived the loss of rank(s) [2]" in out
    served = [int(m) for m in re.findall(r"(\d+) requests by key set position", out)]
    assert len(served) == 2 and min(served) > 0, out[-2000:]


def test_two_servers_killed_one_after_another_with_repair(tmp_path):
    # small requests batched: bundles to a dead server are resent like the rest
    out, events = counts_run(tmp_path, 7, servers=4, k=1, kill="8:2,20:4", coalesce=1 << 16)
    assert "; 0 bundles sent" not in out
    assert "survived the loss of rank(s) [2, 4]" in out
    assert [e["ring_version"] for e in events if e["event"] == "repaired"] == [1, 2]


def test_k2_survives_two_simultaneous_kills(tmp_path):
    out, _ = counts_run(tmp_path, 7, servers=4, k=2, kill="10:2+3", virtual=3)
    assert "survived the loss of rank(s) [2, 3]" in out


def test_scheduler_death_stops_the_job_with_one_message(tmp_path):
    proc = run_mpi(5, "python", "tests/progs/kv_job.py", "counts", "layout.servers=2",
                   f"job.output={tmp_path}", ft=True, timeout=60, env={"MPIPS_TEST_KILL": "10:0"})
    out = proc.stdout + proc.stderr
    assert out.count("the scheduler (rank 0) died: the job stops") == 1, out[-3000:]
    assert "keys exact" not in out


def test_dead_worker_tasks_go_back_to_the_queue(tmp_path):
    proc = run_mpi(5, "python", "tests/progs/kv_job.py", "queue", "layout.servers=1",
                   f"job.output={tmp_path}", ft=True, timeout=120,
                   env={"MPIPS_TEST_KILL_WORKER": "1:4"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "worker 1 dies holding a task" in out
    assert "1 task(s) of rank 3 (worker 1) go back to the queue" in out
    assert "every partition exactly once per epoch" in out


def test_a_job_whose_last_worker_died_fails(tmp_path):
    """One worker, SIGKILLed holding a task: the job must not say "done"."""
    proc = run_mpi(3, "python", "tests/progs/kv_job.py", "queue", "layout.servers=1",
                   f"job.output={tmp_path}", ft=True, timeout=120,
                   env={"MPIPS_TEST_KILL_WORKER": "0:4"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "worker 0 dies holding a task" in out
    assert "every worker is gone" in out and "done in" not in out


def test_server_death_without_replication_stops_the_job(tmp_path):
    proc = run_mpi(5, "python", "tests/progs/kv_job.py", "raise", "layout.servers=2",
                   "layout.replication=0", ft=True, timeout=60, env={"MPIPS_TEST_SERVER_DIES": "1"})
    out = proc.stdout + proc.stderr
    assert "replication = 0: its key ranges are lost" in out
    assert out.count("failed: JobFailed") == 1


def test_a_hung_rank_is_caught_by_heartbeats():
    """Without ULFM: a stopped worker fails the job, naming it."""
    proc = run_mpi(4, "python", "tests/progs/kv_job.py", "raise", "layout.servers=1",
                   "transport.heartbeat_timeout=3", timeout=60, env={"MPIPS_TEST_HANG": "1"})
    assert proc.returncode != 0
    assert "rank 2 (worker 0) is silent: its heartbeat thread sent nothing for 3 s" \
        in proc.stderr, proc.stderr[-3000:]


def test_a_stopped_server_is_taken_for_gone_ended_and_the_job_finishes(tmp_path):
    """SIGSTOP, not SIGKILL: MPI sees nothing, the heartbeats fall silent. The
    scheduler takes the server for gone, ends its process (else every
    survivor's shutdown would wait for it forever), the counts stay exact."""
    proc = run_mpi(6, "python", "tests/progs/kv_job.py", "counts", "layout.servers=3",
                   "layout.replication=1", f"job.output={tmp_path}",
                   "transport.heartbeat_timeout=3", "transport.timeout=30", ft=True,
                   timeout=120, env={"MPIPS_TEST_KILL": "8:2", "MPIPS_TEST_SIGNAL": "STOP"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.count("keys exact") == 2, out[-4000:]
    assert "rank 2 (server 1) is silent: its heartbeat thread sent nothing for 3 s: " \
        "taken for gone; pid" in out and "killed" in out, out[-4000:]
    assert "survived the loss of rank(s) [2]" in out


def test_sigterm_after_a_loss_is_a_failure_to_requeue_not_a_preemption(tmp_path):
    """What Open MPI's launcher does when a host dies: the host's ranks fail,
    then every survivor gets SIGTERM. That is not a preemption: no
    checkpoint, exit 75 (requeue and resume), one message naming the loss."""
    proc = run_mpi(6, "python", "tests/progs/kv_job.py", "counts", "layout.servers=3",
                   "layout.replication=1", f"job.output={tmp_path}", "transport.timeout=30",
                   ft=True, timeout=120, env={"MPIPS_TEST_KILL": "8:2", "MPIPS_TEST_TERM": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 75, (proc.returncode, out[-4000:])
    assert out.count("SIGTERM after rank(s) [2] failed") == 1, out[-4000:]
    assert "not a preemption" in out and "no checkpoint was written yet" in out
    assert "writing a checkpoint" not in out and "keys exact" not in out


def test_a_rank_computing_longer_than_the_heartbeat_timeout_is_alive(tmp_path):
    """Heartbeats come from a thread: 8 s of pure Python with no MPI call,
    against a 3 s timeout, is work, not death."""
    proc = run_mpi(5, "python", "tests/progs/kv_job.py", "counts", "layout.servers=2",
                   f"job.output={tmp_path}", "transport.heartbeat_timeout=3", ft=True,
                   timeout=120, env={"MPIPS_TEST_BUSY": "8"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.count("keys exact") == 2, out[-4000:]
    assert "worker 1 computed for 8 s" in out
    assert "silent" not in out and "survived the loss" not in out, out[-4000:]


def test_without_ulfm_the_job_says_recovery_is_checkpoint_restart(tmp_path):
    proc = run_mpi(3, "python", "tests/progs/kv_job.py", "counts", f"job.output={tmp_path}",
                   timeout=60)
    assert proc.returncode == 0
    assert "no ULFM: recovery is checkpoint/restart only" in proc.stdout


def test_bench_failover_times_detection_failover_and_repair(tmp_path):
    out = tmp_path / "times.jsonl"
    proc = run_mpi(6, "python", "-m", "mpips", "bench", "failover", "--servers", "3",
                   "-o", "layout.replication=1", "-o", f"job.output={tmp_path}",
                   "-o", "failover.requests=60", "-o", "failover.kill_after=20",
                   "-o", "failover.keys=2000", "-o", f"failover.json={out}",
                   ft=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "counters exact" in proc.stdout
    rec = json.loads(out.read_text())
    assert 0 < rec["detection_s"] <= rec["failover_s"] and rec["repair_s"] > 0


@pytest.fixture(scope="module")
def news20(tmp_path_factory):
    from tests.mpitools import run_py, shared_file
    base = tmp_path_factory.mktemp("news20")
    for name in ("news20.binary.train", "news20.binary.test"):
        proc = run_py("-m", "data_tools", "convert", str(shared_file(f"{name}.libsvm.gz")),
                      "-o", str(base / name), "--rows-per-partition", "1000", timeout=120)
        assert proc.returncode == 0, proc.stderr
    return base


def lr_run(news20, out, kill_rank=None):
    """news20 LR with 3 servers (k=1) and 3 workers; optionally SIGKILL a rank
    once training is under way. Returns the final test AUC."""
    import signal

    from tests.mpitools import rank_pid, start_mpi, wait_for_output
    proc = start_mpi(7, "python", "-m", "mpips", "train", "jobs/news20.toml",
                     "--servers", "3", "-o", "layout.replication=1",
                     "-o", f"data.train={news20 / 'news20.binary.train'}",
                     "-o", f"data.test={news20 / 'news20.binary.test'}",
                     "-o", f"job.output={out}", "-o", "job.progress_interval=0.2",
                     "-o", "linear.report_interval=0.2", ft=True)
    try:
        lines = wait_for_output(proc, "examples", timeout=120)
        if kill_rank is not None:
            os.kill(rank_pid(proc, kill_rank), signal.SIGKILL)
        rest, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    text = "".join(lines) + rest
    assert "test: " in text, text[-4000:]
    final = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return final["auc"], text


def test_lr_survives_a_server_and_a_worker_killed_mid_epoch(news20, tmp_path):
    base, _ = lr_run(news20, tmp_path / "base")
    server_auc, text = lr_run(news20, tmp_path / "server", kill_rank=2)
    assert "rank 2 (server 1) failed" in text and "survived the loss" in text
    worker_auc, text = lr_run(news20, tmp_path / "worker", kill_rank=5)
    assert "rank 5 (worker 1) failed" in text and "survived the loss" in text
    print(f"news20 test AUC: no failure {base:.4f}, server killed {server_auc:.4f}, "
          f"worker killed {worker_auc:.4f}")
    assert abs(server_auc - base) <= 0.005 and abs(worker_auc - base) <= 0.005


def test_a_server_lost_as_the_job_ends_leaves_a_whole_model(tmp_path):
    """A server dies after the workers are done, before it saves its share
    of the model: the new owners of its ranges (which held replicas) save
    them, and model.h5 is the one a job without the loss writes (one
    worker: the same updates in the same order)."""
    import h5py
    import numpy as np
    models = []
    for kill in ("", "2"):
        out = tmp_path / f"kill{kill or 'none'}"
        proc = run_mpi(5, "python", "tests/progs/linear_job.py", "jobs/demo.toml",
                       "layout.servers=3", "layout.replication=1", "linear.epochs=1",
                       f"job.output={out}", "transport.timeout=30", ft=True, timeout=120,
                       env={"MPIPS_TEST_DIE_AT_STOP": kill})
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text[-4000:]
        if kill:
            assert "server rank 2 dies at the job's end" in text
            assert "saved by their new owner" in text and "survived the loss" in text, text
        with h5py.File(out / "model.h5") as h5:
            models.append((h5["keys"][:], h5["weights"][:]))
        assert not list(out.glob(".model.shard-*")), "shards left behind"
    (k0, w0), (k1, w1) = models
    assert k0.size > 1000 and np.array_equal(k0, k1) and np.array_equal(w0, w1)
