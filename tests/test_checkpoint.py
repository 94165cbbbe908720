"""Checkpoint/restart: atomic shards and manifests, resume after the whole job
died (also with another number of servers), corrupt checkpoints skipped, and
SIGUSR1 (what Slurm sends before a time limit) writes a checkpoint and stops."""

import signal
import subprocess
import threading

import numpy as np
import pytest

from mpips import checkpoint as ck
from tests.mpitools import mpi_env, mpiexec_cmd, run_mpi

QUEUE = ("python", "tests/progs/kv_job.py", "queue")


def test_shards_manifest_verify_and_load(tmp_path):
    keys = np.array([1, 5, 2**63, 2**64 - 1], np.uint64)
    vals = np.arange(8, dtype=np.float32).reshape(4, 2)
    acc = vals * 10
    e0 = ck.write_shard(tmp_path, 0, 0, {"w": (keys[:2], vals[:2], {"acc": acc[:2]})})
    e1 = ck.write_shard(tmp_path, 0, 1, {"w": (keys[2:], vals[2:], {"acc": acc[2:]})})
    ck.write_manifest(tmp_path, 0, {"files": [e0, e1]}, keep=2)
    m = ck.newest_complete(tmp_path)
    k, v, st = ck.load_ranges(m, "w", 3, 2**64)  # cut across both shards
    np.testing.assert_array_equal(k, keys[1:])
    np.testing.assert_array_equal(v, vals[1:])
    np.testing.assert_array_equal(st["acc"], acc[1:])
    assert not list(tmp_path.rglob("*.tmp"))


def test_ranges_are_found_from_the_key_index_and_read_alone(tmp_path, monkeypatch):
    """A resuming server reads its ranges from a shard's key index and one
    short slice: the same entries as a search of all its keys, and the keys
    outside the range are never read."""
    monkeypatch.setattr(ck, "INDEX_STEP", 64)
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True))
    vals = rng.random((keys.size, 1)).astype(np.float32)
    entry = ck.write_shard(tmp_path, 0, 0, {"w": (keys, vals, {})})
    ck.write_manifest(tmp_path, 0, {"files": [entry]}, keep=2)
    m = ck.newest_complete(tmp_path)
    cuts = [0, 1, int(keys[0]), int(keys[63]), int(keys[64]), int(keys[65]), int(keys[-1]),
            2**63, 2**64 - 1, 2**64, *rng.integers(0, 2**64 - 1, 40, dtype=np.uint64).tolist()]
    for lo in cuts:
        for hi in cuts:
            if lo >= hi:
                continue
            k, v, _ = ck.load_ranges(m, "w", lo, hi)
            a = int(np.searchsorted(keys, np.uint64(lo)))
            b = keys.size if hi >= 2**64 else int(np.searchsorted(keys, np.uint64(hi)))
            np.testing.assert_array_equal(k, keys[a:b])
            np.testing.assert_array_equal(v, vals[a:b])
    read = []
    real = ck.h5py.Dataset.__getitem__
    monkeypatch.setattr(ck.h5py.Dataset, "__getitem__",
                        lambda ds, sel: read.append((ds.name, sel)) or real(ds, sel))
    ck.load_ranges(m, "w", int(keys[5000]), int(keys[5010]))
    assert ("/tables/w/keys", Ellipsis) not in read, read  # never the whole key array


def test_keep_prunes_and_corrupt_ones_are_skipped(tmp_path):
    for i in range(4):
        e = ck.write_shard(tmp_path, i, 0, {"w": (np.array([i], np.uint64),
                                                  np.ones((1, 1), np.float32), {})})
        ck.write_manifest(tmp_path, i, {"files": [e]}, keep=2)
    assert ck.complete_ids(tmp_path) == [2, 3]
    shard = ck.folder(tmp_path, 3) / "server-0.h5"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    said = []
    m = ck.newest_complete(tmp_path, say=said.append)
    assert m["id"] == 2 and "checksum mismatch" in said[0]
    with open(ck.folder(tmp_path, 2) / "server-0.h5", "ab") as f:
        f.write(b"x")
    with pytest.raises(ck.CheckpointError, match="no complete checkpoint"):
        ck.newest_complete(tmp_path, say=said.append)
    assert "partial write" in said[-1]


@pytest.mark.integration
def test_resume_after_the_whole_job_died_with_more_servers(tmp_path):
    first = run_mpi(5, *QUEUE, "layout.servers=2", f"job.output={tmp_path}",
                    "checkpoint.every_tasks=5", timeout=90, env={"MPIPS_TEST_JOB_DIES_AFTER": "15"})
    assert first.returncode != 0 and "the whole job dies now" in first.stdout
    assert "checkpoint 1 written" in first.stdout
    again = run_mpi(6, *QUEUE, "layout.servers=3", f"job.output={tmp_path}",
                    "checkpoint.every_tasks=5", "checkpoint.resume=true", timeout=90)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "resumed from checkpoint" in out
    # QueueJob checks that every partition's key counts exactly one push per
    # epoch: the resumed job neither repeated nor skipped a finished task.
    assert "queue: 69 tasks done after resume" in out


@pytest.mark.integration
def test_resumed_run_ends_with_the_same_weights(tmp_path):
    args = ("python", "tests/progs/kv_job.py", "determ", "layout.servers=1")
    straight = run_mpi(3, *args, f"job.output={tmp_path / 'a'}", timeout=90, check=True)
    assert straight.returncode == 0
    run_mpi(3, *args, f"job.output={tmp_path / 'b'}", "checkpoint.every_tasks=7",
            timeout=90, env={"MPIPS_TEST_JOB_DIES_AFTER": "30"})
    assert not (tmp_path / "b" / "final.npy").exists()
    run_mpi(4, *args, "layout.servers=2", f"job.output={tmp_path / 'b'}",
            "checkpoint.every_tasks=7", "checkpoint.resume=true", timeout=90, check=True)
    a = np.load(tmp_path / "a" / "final.npy")
    b = np.load(tmp_path / "b" / "final.npy")
    assert np.abs(a).sum() > 0
    np.testing.assert_array_equal(a, b)


@pytest.mark.integration
def test_workers_go_on_while_checkpoints_are_written(tmp_path):
    """The workers wait only while the servers copy their arrays: tasks go on
    while the files are written (each made 0.5 s slower here), and a run
    resumed from such a checkpoint ends with the weights of a run that never
    stopped (the copy is a consistent cut)."""
    import re
    args = ("python", "tests/progs/kv_job.py", "determ", "layout.servers=1")
    straight = run_mpi(3, *args, f"job.output={tmp_path / 'a'}", timeout=90, check=True)
    assert straight.returncode == 0
    slow = {"MPIPS_TEST_SLOW_CHECKPOINT": "0.5", "MPIPS_TEST_TASK_SLEEP": "0.03",
            "MPIPS_TEST_JOB_DIES_AFTER": "45"}
    first = run_mpi(3, *args, f"job.output={tmp_path / 'b'}", "checkpoint.every_tasks=7",
                    timeout=90, env=slow)
    meanwhile = [int(n) for n in re.findall(r"(\d+) tasks done meanwhile", first.stdout)]
    assert meanwhile and max(meanwhile) > 0, first.stdout[-3000:]
    run_mpi(3, *args, f"job.output={tmp_path / 'b'}", "checkpoint.every_tasks=7",
            "checkpoint.resume=true", timeout=90, check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "final.npy"),
                                  np.load(tmp_path / "b" / "final.npy"))


@pytest.mark.integration
def test_sigusr1_writes_a_checkpoint_and_stops(tmp_path):
    env = mpi_env()
    env["MPIPS_TEST_TASK_SLEEP"] = "0.2"  # about 7 s of tasks: the signal comes mid-run
    env["MPIPS_TEST_ANNOUNCE"] = "1"  # a line per task done
    cmd = mpiexec_cmd(5, *QUEUE, "layout.servers=1", f"job.output={tmp_path}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    guard = threading.Timer(90, proc.kill)  # a hang fails the test, not the suite
    guard.start()
    try:
        seen = []
        for line in proc.stdout:  # signal once a few tasks are done, mid-run
            seen.append(line)
            if sum(": task " in x for x in seen) >= 3:
                break
        proc.send_signal(signal.SIGUSR1)  # mpiexec forwards it to every rank
        rest, _ = proc.communicate(timeout=60)
        out = "".join(seen) + rest
    finally:
        guard.cancel()
        proc.kill()
    assert "SIGUSR1: writing a checkpoint, then stopping" in out, out[-3000:]
    assert "stopped on SIGUSR1: checkpoint 0 is written" in out
    assert proc.returncode == 0
    again = run_mpi(5, *QUEUE, "layout.servers=1", f"job.output={tmp_path}",
                    "checkpoint.resume=true", timeout=90)
    assert again.returncode == 0 and "resumed from checkpoint 0" in again.stdout
