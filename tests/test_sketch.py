"""The count-min sketch app: bounds, heavy hitters, streams, queries, jobs."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from mpips.apps.sketch.store import CountMinStore, SketchParams, unmix64
from mpips.apps.sketch.stream import (
    ZipfSpec,
    aggregate,
    parse_lines,
    read_docword,
    zipf_counts,
    zipf_ids,
    zipf_pool,
    zipf_stream,
)
from mpips.keys import hash_feature, mix64
from tests.mpitools import ROOT, mpi_env, run_mpi, shared_file


def zipf_truth(n: int, s: float, universe: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(s, n), universe)
    return np.unique(ids, return_counts=True)


def feed(store: CountMinStore, ids: np.ndarray, counts: np.ndarray, parts: int = 7) -> None:
    """Push (id, count) pairs in several requests, as workers would."""
    keys = hash_feature(ids)
    order = np.random.default_rng(0).permutation(keys.size)
    for chunk in np.array_split(order, parts):
        k, c = aggregate(keys[chunk], counts[chunk])
        store.push(k, c.reshape(-1, 1))


@pytest.mark.parametrize("conservative", [False, True])
def test_estimates_never_below_and_within_epsilon(conservative):
    eps, delta = 2e-4, 0.01
    ids, counts = zipf_truth(400_000, 1.05, 200_000, 3)
    store = CountMinStore(SketchParams(eps, delta, seed=5, conservative=conservative))
    feed(store, ids, counts)
    est = store.estimate(hash_feature(ids))
    n = int(counts.sum())
    assert store.total == n
    assert (est >= counts).all()
    over = (est - counts) > eps * n
    # The bound fails for a key with probability <= delta: allow sampling noise.
    assert over.mean() <= delta, (over.mean(), over.sum())


def test_conservative_never_above_plain_and_batching_does_not_matter():
    ids, counts = zipf_truth(200_000, 1.1, 50_000, 4)
    plain, cons, one = (CountMinStore(SketchParams(1e-3, 0.05, conservative=c))
                        for c in (False, True, False))
    feed(plain, ids, counts, parts=9)
    feed(cons, ids, counts, parts=9)
    feed(one, ids, counts, parts=1)
    keys = hash_feature(ids)
    assert np.array_equal(plain.counters, one.counters)  # add.at sums shared cells
    assert (cons.estimate(keys) <= plain.estimate(keys)).all()
    assert (cons.estimate(keys) >= counts).all()
    assert (cons.estimate(keys) < plain.estimate(keys)).any()


def test_heavy_hitters_of_a_zipf_stream_are_the_exact_ones():
    ids, counts = zipf_truth(1_000_000, 1.2, 1_000_000, 6)
    store = CountMinStore(SketchParams(1e-4, 0.01, candidates=64))
    feed(store, ids, counts, parts=50)
    keys, est = store.top(10)
    exact = ids[np.argsort(-counts, kind="stable")[:10]]
    assert unmix64(keys).tolist() == exact.tolist()


def test_unmix64_inverts_the_mixer():
    x = np.concatenate([np.arange(1000, dtype=np.uint64),
                        np.random.default_rng(1).integers(0, 2**64, 1000, dtype=np.uint64)])
    assert np.array_equal(unmix64(mix64(x)), x)


def test_replica_and_snapshot_copy_the_owner_exactly():
    params = SketchParams(1e-3, 0.05)
    owner, replica, repaired = (CountMinStore(params) for _ in range(3))
    ids, counts = zipf_truth(100_000, 1.1, 20_000, 8)
    keys = hash_feature(ids)
    for chunk in np.array_split(np.arange(keys.size), 5):
        k, c = aggregate(keys[chunk], counts[chunk])
        owner.push(k, c.reshape(-1, 1))
        rows = owner.rows_with_state(k)
        replica.assign_rows(k, rows)
        replica.assign_rows(k, rows)  # a repeated message changes nothing
    assert np.array_equal(owner.counters, replica.counters) and replica.total == owner.total
    repaired.assign_rows(owner.keys, owner.rows_with_state(owner.keys))
    assert np.array_equal(owner.counters, repaired.counters)
    assert repaired.total == owner.total


def test_text_lines_and_errors_name_the_line():
    b = parse_lines(b"5 2\n7 1\n5 3\n", "int", True, "in")
    k, c = aggregate(b.keys, b.counts)
    assert dict(zip(unmix64(k).tolist(), c.tolist(), strict=True)) == {5: 5, 7: 1}
    s = parse_lines(b"apple\npear\napple\n", "string", False, "in")
    assert s.records == 3 and len(set(s.keys.tolist())) == 2
    with pytest.raises(ValueError, match="line 2: b'x' is not an integer"):
        parse_lines(b"1\nx\n", "int", False, "in")


def test_zipf_stream_replays_the_documented_ids():
    spec = ZipfSpec(300_000, 1.1, 1000, 1 << 16, 50_000, 10_000, 0.3, 5)
    keys = np.concatenate([b.keys for b in zipf_stream(spec, 1, 70_000)])
    ids = zipf_ids(spec, 1, zipf_pool(spec, 1), 0, spec.items)
    assert np.array_equal(keys, hash_feature(ids))
    assert (ids > spec.universe).sum() > 1000  # the bursts are there


# ---- jobs under mpiexec ------------------------------------------------------------------
def query(out, **q):
    from mpips.apps.sketch import query as ask
    return ask(out, q, timeout=20)


def test_zipf_job_two_servers_bound_and_heavy_hitters(tmp_path):
    spec = dict(zipf_items=400_000, zipf_s=1.1, zipf_universe=50_000, zipf_pool=1 << 17,
                burst_period=100_000, burst_length=20_000, burst_share=0.5)
    opts = [f"sketch.{k}={v}" for k, v in spec.items()]
    proc = run_mpi(5, "python", "-m", "mpips", "train", "jobs/sketch.toml", "--servers", "2",
                   "-o", "layout.virtual_servers=2", "-o", "sketch.conservative=true",
                   "-o", "sketch.epsilon=1e-3", "-o", "sketch.batch=65536",
                   "-o", f"job.output={tmp_path}", *sum((["-o", o] for o in opts), []),
                   timeout=90, check=True)
    assert "sketch: 800000 inserts" in proc.stdout, proc.stdout
    ids, counts = zipf_counts(ZipfSpec(400_000, 1.1, 50_000, 1 << 17, 100_000, 20_000, 0.5,
                                       1), 2)
    ans = query(tmp_path, ids=ids.tolist(), top=10)
    est = np.array([p["estimate"] for p in ans["points"]])
    n = int(counts.sum())
    assert ans["source"] == "saved" and ans["total"] == n
    assert (est >= counts).all() and ((est - counts) > 1e-3 * n).mean() <= 0.01
    exact = ids[np.argsort(-counts, kind="stable")[:10]]
    assert [t["id"] for t in ans["top"]] == exact.tolist()


def test_stdin_stream_live_query_and_clean_end(tmp_path):
    env = mpi_env()
    env["MPIEXEC_OPTS"] = "--oversubscribe"
    proc = subprocess.Popen(["jobs/sketch_stdin.sh", "4", "jobs/sketch_text.toml",
                             "-o", f"job.output={tmp_path}", "-o", "sketch.query_poll=0.1",
                             "-o", "sketch.text_counts=true"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        proc.stdin.write(b"".join(b"%d %d\n" % (i, i) for i in range(1, 101)))
        proc.stdin.flush()
        deadline = time.monotonic() + 40
        while True:  # the job is running and waiting for more input
            ans = query(tmp_path, ids=[7, 100, 1000], top=3)
            if ans["points"][1]["estimate"] >= 100 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ans["source"] == "live", ans
        assert [p["estimate"] for p in ans["points"]][:2] == [7, 100]
        assert [t["id"] for t in ans["top"]] == [100, 99, 98]
        proc.stdin.write(b"1000 5\n")
        proc.stdin.close()  # end of stream: the job ends by itself
        proc.wait(timeout=60)  # the job's output is a few lines: the pipe cannot fill
        out = proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    assert "sketch: 101 inserts (total count 5055)" in out, out[-3000:]
    final = query(tmp_path, ids=[1000])
    assert final["source"] == "saved" and final["points"][0]["estimate"] == 5


def test_news20_words_as_a_stream(tmp_path):
    path = shared_file("news20.lda.docword.txt.gz")
    run_mpi(4, "python", "-m", "mpips", "train", "jobs/sketch_news20.toml",
            "-o", f"sketch.path={path}", "-o", "sketch.repeat=1",
            "-o", f"job.output={tmp_path}", timeout=90, check=True)
    rows = read_docword(path)
    words = np.unique(rows[:, 1])
    truth = np.bincount(rows[:, 1], weights=rows[:, 2])[words].astype(np.int64)
    ans = query(tmp_path, ids=words.tolist(), top=5)
    est = np.array([p["estimate"] for p in ans["points"]])
    assert ans["total"] == int(rows[:, 2].sum())
    assert (est >= truth).all() and ((est - truth) > 1e-4 * ans["total"]).mean() <= 0.01
    assert [t["id"] for t in ans["top"]] == words[np.argsort(-truth, kind="stable")[:5]].tolist()


def test_query_of_a_job_that_is_not_there_times_out(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mpips", "query", "--job-output",
                           str(tmp_path), "--top", "3", "--timeout", "0.5"],
                          capture_output=True, text=True, env=mpi_env(), cwd=ROOT, timeout=30)
    assert proc.returncode == 1 and "no answer within 0.5 s" in proc.stderr


def test_server_killed_mid_stream_keeps_the_bound(tmp_path):
    """A server is SIGKILLed mid-stream under ULFM: the stream goes on, and every
    estimate still bounds the true count (all increments were acknowledged)."""
    import json
    import os
    import signal

    from tests.mpitools import rank_pid, start_mpi, wait_for_output
    # long enough that the kill lands mid-stream even on a loaded machine
    spec = ZipfSpec(20_000_000, 1.1, 50_000, 1 << 17, 0, 0, 0.0, 1)
    opts = ["zipf_items=20000000", "zipf_s=1.1", "zipf_universe=50000",
            f"zipf_pool={1 << 17}", "burst_period=0", "burst_length=0", "burst_share=0",
            "batch=65536", "epsilon=1e-3", "report_interval=0.2"]
    proc = start_mpi(6, "python", "-m", "mpips", "train", "jobs/sketch.toml", "--servers",
                     "3", "-o", "layout.replication=1", "-o", f"job.output={tmp_path}",
                     "-o", "job.progress_interval=0.2",
                     *sum((["-o", f"sketch.{o}"] for o in opts), []), ft=True)
    try:
        lines = wait_for_output(proc, "inserts", timeout=60)
        os.kill(rank_pid(proc, 2), signal.SIGKILL)
        killed = time.time()
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 0 and "survived the loss of rank(s) [2]" in out, out[-3000:]
    ids, counts = zipf_counts(spec, 2)
    ans = query(tmp_path, ids=ids.tolist())
    est = np.array([p["estimate"] for p in ans["points"]])
    n = int(counts.sum())
    assert ans["total"] == n
    assert (est >= counts).all() and ((est - counts) > 1e-3 * n).mean() <= 0.01
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    served = min(e["time"] for e in events if e["event"] == "first_served")
    print(f"sketch: a server killed mid-stream; the new owner served "
          f"{(served - killed) * 1000:.0f} ms after the kill")
    assert served > killed


@pytest.mark.timeout(60)
def test_hostile_files_in_the_query_folder_are_answered_or_refused_one_by_one(tmp_path):
    """Every file worker 0 finds in OUTPUT/queries gets an answer of its own (an
    error for a bad one) and the job goes on: no query can raise out of the
    poll, block it (a FIFO) or make it write through a planted symlink."""
    import json
    import os
    from types import SimpleNamespace

    from mpips.apps.sketch.queries import LiveQueries
    from mpips.postoffice import Command

    class FakeKV:
        def pull(self, keys):
            return np.zeros((keys.size, 1), np.int64)

        def wait(self, pulled):
            return pulled

    po = SimpleNamespace(layout=SimpleNamespace(servers=[1]), ask=lambda ranks, c: [
        Command("sketch.top", {"total": 7}, np.empty(0, np.uint64), np.empty((0, 1)))])
    folder = tmp_path / "queries"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    hostile = {"list": [1, 2], "negative": {"ids": [-1]}, "big": {"keys": [2 ** 64]},
               "ids-as-strings": {"ids": ["a"]}, "huge-top": {"top": 1e30},
               "float-ids": {"ids": [1.5]}, "strings-not-strings": {"strings": [1]},
               "unknown": {"idz": [1]}, "bool-top": {"top": True}}
    for name, q in hostile.items():
        (folder / f"{name}.query.json").write_text(json.dumps(q))
    (folder / "broken.query.json").write_text("{not json")
    (folder / "dir.query.json").mkdir()
    os.mkfifo(folder / "fifo.query.json")
    (folder / "link.query.json").symlink_to(victim)
    (folder / "good.query.json").write_text(json.dumps({"ids": [3, 4], "top": 2}))
    (folder / "good.answer.json").symlink_to(victim)  # planted where the answer goes
    (folder / f".good.answer.json.tmp{os.getpid()}").symlink_to(victim)
    live = LiveQueries(po, FakeKV(), folder, interval=0.0, epsilon=1e-3)
    live.poll(force=True)
    live.poll(force=True)  # the folder that stays is refused once, not again
    answers = {p.name.removesuffix(".answer.json"): json.loads(p.read_text())
               for p in folder.glob("*.answer.json") if not p.is_symlink()}
    bad = [*hostile, "broken", "dir", "fifo", "link"]
    assert sorted(answers) == sorted([*bad, "good"])
    for name in bad:
        assert "error" in answers[name], (name, answers[name])
    assert "not a regular file" in answers["fifo"]["error"]
    assert "not a regular file" in answers["link"]["error"]
    assert [p["item"] for p in answers["good"]["points"]] == [3, 4]
    assert answers["good"]["total"] == 7
    assert victim.read_text() == "untouched"
    assert not (folder / "good.answer.json").is_symlink()
    assert live.answered == len(bad) + 1
