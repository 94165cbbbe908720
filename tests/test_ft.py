"""Failures for real: ranks are SIGKILLed under mpiexec --with-ft ulfm.

The counter workload (tests/progs/kv_job.py counts) checks that every key's
value equals the exact number of pushes, all of which are acknowledged:
nothing lost, nothing counted twice.
"""

import json
import os

import pytest

from tests.mpitools import run_mpi

pytestmark = pytest.mark.integration


def counts_run(tmp_path, n, servers, k, kill, virtual=1):
    os.environ["MPIPS_TEST_KILL"] = kill
    try:
        proc = run_mpi(n, "python", "tests/progs/kv_job.py", "counts",
                       f"layout.servers={servers}", f"layout.replication={k}",
                       f"layout.virtual_servers={virtual}", f"job.output={tmp_path}",
                       "transport.timeout=30", ft=True, timeout=120)
    finally:
        del os.environ["MPIPS_TEST_KILL"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.count("keys exact") == n - 1 - servers, out[-4000:]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return out, events


def test_server_killed_mid_run_loses_nothing(tmp_path):
    out, events = counts_run(tmp_path, 6, servers=3, k=1, kill="10:2")
    assert "survived the loss of rank(s) [2]" in out
    names = [e["event"] for e in events]
    assert names.count("detected") == 1 and "first_served" in names and "repaired" in names


def test_two_servers_killed_one_after_another_with_repair(tmp_path):
    out, events = counts_run(tmp_path, 7, servers=4, k=1, kill="8:2,20:4")
    assert "survived the loss of rank(s) [2, 4]" in out
    assert [e["ring_version"] for e in events if e["event"] == "repaired"] == [1, 2]


def test_k2_survives_two_simultaneous_kills(tmp_path):
    out, _ = counts_run(tmp_path, 7, servers=4, k=2, kill="10:2+3", virtual=3)
    assert "survived the loss of rank(s) [2, 3]" in out


def test_scheduler_death_stops_the_job_with_one_message(tmp_path):
    os.environ["MPIPS_TEST_KILL"] = "10:0"
    try:
        proc = run_mpi(5, "python", "tests/progs/kv_job.py", "counts", "layout.servers=2",
                       f"job.output={tmp_path}", ft=True, timeout=60)
    finally:
        del os.environ["MPIPS_TEST_KILL"]
    out = proc.stdout + proc.stderr
    assert out.count("the scheduler (rank 0) died: the job stops") == 1, out[-3000:]
    assert "keys exact" not in out


def test_dead_worker_tasks_go_back_to_the_queue(tmp_path):
    os.environ["MPIPS_TEST_KILL_WORKER"] = "1:4"
    try:
        proc = run_mpi(5, "python", "tests/progs/kv_job.py", "queue", "layout.servers=1",
                       f"job.output={tmp_path}", ft=True, timeout=120)
    finally:
        del os.environ["MPIPS_TEST_KILL_WORKER"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "worker 1 dies holding a task" in out
    assert "1 task(s) of rank 3 (worker 1) go back to the queue" in out
    assert "every partition exactly once per epoch" in out


def test_server_death_without_replication_stops_the_job(tmp_path):
    os.environ["MPIPS_TEST_SERVER_DIES"] = "1"
    try:
        proc = run_mpi(5, "python", "tests/progs/kv_job.py", "raise", "layout.servers=2",
                       "layout.replication=0", ft=True, timeout=60)
    finally:
        del os.environ["MPIPS_TEST_SERVER_DIES"]
    out = proc.stdout + proc.stderr
    assert "replication = 0: its key ranges are lost" in out
    assert out.count("failed: JobFailed") == 1


def test_a_hung_rank_is_caught_by_heartbeats():
    os.environ["MPIPS_TEST_HANG"] = "1"
    try:
        proc = run_mpi(4, "python", "tests/progs/kv_job.py", "raise", "layout.servers=1",
                       "transport.heartbeat_timeout=3", timeout=60)
    finally:
        del os.environ["MPIPS_TEST_HANG"]
    assert proc.returncode != 0
    assert "rank 2 (worker 0) sent nothing for 3 s" in proc.stderr


def test_without_ulfm_the_job_says_recovery_is_checkpoint_restart(tmp_path):
    proc = run_mpi(3, "python", "tests/progs/kv_job.py", "counts", f"job.output={tmp_path}",
                   timeout=60)
    assert proc.returncode == 0
    assert "no ULFM: recovery is checkpoint/restart only" in proc.stdout
