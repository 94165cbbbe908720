"""Consistency policies: each guarantee proved from the scheduler's task log
(issue/finish order, not timing), synchronous SGD against a single-process
reference, and misconfigured policies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mpips import config
from mpips.consistency import (
    BoundedDelay,
    IterationQueue,
    PolicyError,
    TaskClock,
    make_policy,
    policy_of,
)
from mpips.consistency.policy import strict_then_bounded

from .mpitools import ROOT, run_mpi, run_py

JOB = str(ROOT / "tests" / "progs" / "consistency_job.py")
sys.path.insert(0, str(ROOT / "tests" / "progs"))


# ---- the log checks ------------------------------------------------------------------
def task_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "tasks.jsonl")]


def finish_of_tasks(recs: list[dict]) -> np.ndarray:
    """Event number at which each task finished (its last participant reported)."""
    n = max(r["ts"] for r in recs) + 1
    fin = np.zeros(n, np.int64)
    for r in recs:
        assert "finish_seq" in r, f"task {r['ts']} on rank {r['worker']} never finished"
        fin[r["ts"]] = max(fin[r["ts"]], r["finish_seq"])
    return fin


def violations(recs: list[dict], policy) -> list[str]:
    """Every (task, worker) issued before one of its dependencies finished."""
    fin = finish_of_tasks(recs)
    bad = []
    for r in recs:
        deps = np.asarray(list(policy.deps(r["ts"])), np.int64)
        if deps.size and r["start_seq"] <= fin[deps].max():
            bad.append(f"task {r['ts']} started (event {r['start_seq']}) on rank "
                       f"{r['worker']} before task {int(deps[fin[deps].argmax()])} finished")
    return bad


def run_tasks(tmp_path: Path, name: str, policy_opts: list[str], sleep: float = 0.02,
              workers: int = 3) -> list[dict]:
    out = tmp_path / name
    opts = [f"job.output={out}", "layout.servers=1", *policy_opts]
    args = [a for o in opts for a in ("-o", o)]
    proc = run_mpi(workers + 2, sys.executable, JOB, "tasks", *args, timeout=90,
                   check=True)
    assert "mpips: consistency" in proc.stdout
    recs = task_log(out)
    summary = json.loads((out / "consistency.json").read_text())
    assert summary["split"] == "consistency" and summary["tasks"] == len(recs)
    return recs


# ---- unit: policies and the clock ---------------------------------------------------------
def test_policy_names_and_errors():
    assert str(make_policy("sequential")) == "sequential"
    assert make_policy("bounded_delay:3").tau == 3
    assert make_policy("eventual").tau is None
    for bad, words in (("bounded_delay:-1", "must be >= 0"), ("bounded_delay:x", "integer"),
                       ("bsp", "unknown policy"), ("user", "exactly one of")):
        with pytest.raises(PolicyError, match=words):
            make_policy(bad)
    with pytest.raises(PolicyError, match="cycle: 1 -> 2 -> 3 -> 1"):
        make_policy("user", dag=[[1, 2], [2, 3], [3, 1]])
    with pytest.raises(PolicyError, match="points back in time"):
        make_policy("user", dag=[[4, 2]])
    with pytest.raises(PolicyError, match="no 'nope'"):
        make_policy("user", function="mpips.consistency.policy:nope")


def test_clock_bounded_delay_by_hand():
    clock = TaskClock(BoundedDelay(2), workers=[1, 2], everyone=True)
    q = IterationQueue(10, [1, 2])
    for t in range(3):  # worker 1 runs ahead: tasks 0..2 need nothing finished
        assert clock.ready(clock.candidate(q, 1))
        q.next(1)
        assert clock.start(t, 1)["staleness"] == t
    assert not clock.ready(3)  # task 0 is not finished on worker 2
    clock.finish(0, 1)
    assert not clock.ready(3)
    q.next(2)
    clock.start(0, 2)
    clock.finish(0, 2)
    assert clock.ready(3) and clock.watermark == 1 and clock.unfinished_before(3) == 2
    clock.abandon(2)  # a dead worker: nothing waits for it any more
    clock.finish(1, 1)
    assert clock.is_finished(1)


def test_user_callable_is_strict_then_relaxed():
    p = make_policy("user", function="mpips.consistency.policy:strict_then_bounded",
                    args={"strict": 3, "tau": 2})
    assert list(p.deps(2)) == [0, 1] and list(p.deps(5)) == [0, 1, 2]
    assert list(strict_then_bounded(1, strict=3)) == [0]


def test_config_errors_name_key_and_file(tmp_path):
    cases = {"policy = \"bounded_delay:-2\"": "[consistency] policy = 'bounded_delay:-2' "
             "tau = -2 must be >= 0",
             "policy = \"strong\"": "unknown policy 'strong'",
             "policy = \"user\"\ndag = [[0, 1], [1, 0]]": "[consistency] dag = [[0, 1], "
             "[1, 0]] has a cycle: 0 -> 1 -> 0"}
    for i, (body, words) in enumerate(cases.items()):
        job = tmp_path / f"bad{i}.toml"
        job.write_text(f"[consistency]\n{body}\n")
        with pytest.raises(config.ConfigError) as e:
            policy_of(config.load(job))
        assert str(job) in str(e.value) and words in str(e.value), str(e.value)
    # the command line says it once, before MPI starts
    job = tmp_path / "bad0.toml"
    proc = run_py("-m", "mpips", "train", str(job), timeout=60)
    assert proc.returncode != 0 and f"{job}: [consistency] policy" in proc.stderr


# ---- under MPI: every guarantee from the log ----------------------------------------------
def test_sequential_no_task_starts_before_all_earlier_finished(tmp_path):
    recs = run_tasks(tmp_path, "seq", ["consistency.policy=sequential"])
    assert not violations(recs, make_policy("sequential"))
    assert max(r["staleness"] for r in recs) == 0
    assert len(recs) == 3 * 24


def test_bounded_delay_staleness_reaches_but_never_exceeds_tau(tmp_path):
    tau = 3
    recs = run_tasks(tmp_path, "bd", [f'consistency.policy="bounded_delay:{tau}"'])
    assert not violations(recs, make_policy(f"bounded_delay:{tau}"))
    stale = [r["staleness"] for r in recs]
    assert max(stale) == tau, "the straggler should let the others run tau ahead"
    # the bound held the fast workers: some of their requests waited
    assert any(r["start"] > r["requested"] for r in recs if r["worker"] != 3)


def test_eventual_runs_ahead_beyond_any_small_bound(tmp_path):
    recs = run_tasks(tmp_path, "ev", ["consistency.policy=eventual"])
    assert max(r["staleness"] for r in recs) > 3


def test_user_dag_edges_are_respected(tmp_path):
    edges = [[0, 5], [3, 4], [1, 10], [6, 7], [2, 20]]
    opts = ["consistency.policy=user", f"consistency.dag={json.dumps(edges)}"]
    recs = run_tasks(tmp_path, "dag", opts)
    policy = make_policy("user", dag=edges)
    assert not violations(recs, policy)
    # without the edges the fast workers would have run past them: the DAG held them
    fin = finish_of_tasks(recs)
    held = [r for r in recs if r["ts"] in (5, 10, 20) and r["worker"] != 3]
    assert all(r["start_seq"] > fin[policy.deps(r["ts"])].max() for r in held)


def test_aggregated_sequential_sgd_equals_single_process(tmp_path):
    from consistency_job import reference
    out = tmp_path / "sgd"
    run_mpi(5, sys.executable, JOB, "sgd", "-o", f"job.output={out}", "-o",
            "layout.servers=2", "-o", "consistency.policy=sequential", timeout=90, check=True)
    saved = np.load(out / "weights.npy")
    keys, got = saved[0].view(np.uint64), saved[1].astype(np.float32)
    ref = reference(2, 0)
    want = np.array([ref.get(int(k), 0.0) for k in keys], np.float32)
    assert keys.size == len(ref)
    assert np.array_equal(got, want), f"max difference {np.abs(got - want).max()}"


def test_bpg_objective_falls_under_bounded_delay(tmp_path):
    out = tmp_path / "bpg"
    opts = [f"job.output={out}", "job.app=bpg", "layout.servers=1", "bpg.data=synthetic",
            "bpg.synthetic_rows=2000", "bpg.synthetic_features=5000", "bpg.blocks=8",
            "bpg.passes=3", 'consistency.policy="bounded_delay:2"', "bpg.l1=0.5"]
    job = tmp_path / "bpg.toml"
    job.write_text('[job]\napp = "bpg"\n')
    run_mpi(4, sys.executable, "-m", "mpips", "train", str(job),
            *[a for o in opts for a in ("-o", o)], timeout=90, check=True)
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    train = [x["objective"] for x in lines if x.get("split") == "train"]
    assert len(train) == 24 and train[-1] < 0.8 * train[0], train
    sched = next(x for x in lines if x.get("split") == "consistency")
    assert sched["staleness_max"] <= 2


def test_the_summary_kept_as_running_totals_equals_the_records():
    """Progress lines read running totals (O(1) a line): they must say what
    a pass over the task records says."""
    import numpy as np

    from mpips.consistency.clock import TaskClock
    from mpips.consistency.policy import BoundedDelay
    clock = TaskClock(BoundedDelay(3), workers=[1, 2, 3])
    rng = np.random.default_rng(0)
    open_tasks = []
    for _ in range(400):
        w = int(rng.integers(1, 4))
        if open_tasks and rng.random() < 0.45:
            t, tw = open_tasks.pop(int(rng.integers(len(open_tasks))))
            clock.finish(t, tw)
        else:
            t = clock.next_ts
            clock.requested(w)
            clock.start(t, w)
            open_tasks.append((t, w))
    t, w = open_tasks[0]
    clock.start(t, w)  # started again: replaces its record
    recs = list(clock.records.values())
    s = clock.summary()
    assert s["tasks"] == len(recs)
    assert s["staleness_max"] == max(r["staleness"] for r in recs)
    assert s["staleness_mean"] == pytest.approx(np.mean([r["staleness"] for r in recs]))
    assert s["wait_total"] == pytest.approx(sum(r["wait"] for r in recs))
