"""Linear models under mpiexec: planted-model recovery, 1 vs 2 workers, predict
reproducing the logged metrics, and the done criteria on adult and news20."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.mpitools import ROOT, run_mpi, run_py, shared_file

pytestmark = pytest.mark.integration


def train(tmp: Path, job: str, *overrides: str, n: int = 4, name: str = "run") -> Path:
    out = tmp / name
    proc = run_mpi(n, "python", "-m", "mpips", "train", job, "-o", f"job.output={out}",
                   *[a for o in overrides for a in ("-o", o)], timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (tmp / f"{name}.stdout").write_text(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert lines and all("epoch" in line for line in lines), proc.stdout[-3000:]
    assert "test: logloss" in proc.stdout, proc.stdout[-3000:]
    return out


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]


def planted_ctr(base: Path, rows: int, rows_per_partition: int, seed: int,
                test_partitions: int, *synth_args: str) -> Path:
    """A planted CTR set in ``base``: train and test folders."""
    proc = run_py("-m", "data_tools", "synth", "ctr", "--rows", str(rows), "--fields", "8",
                  "--vocab", "2000", "--seed", str(seed), "--rows-per-partition",
                  str(rows_per_partition), *synth_args, "-o", str(base / "all"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = run_py("-m", "mpips.apps.linear.tools", "split", str(base / "all"),
                  str(base / "train"), str(base / "test"), "--test-partitions",
                  str(test_partitions), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return base


@pytest.fixture(scope="module")
def ctr(tmp_path_factory) -> Path:
    """A small planted CTR set cut into train (4 partitions) and test (1)."""
    return planted_ctr(tmp_path_factory.mktemp("ctr"), 100000, 20000, 3, 1,
                       "--weight-scale", "1.0", "--density", "0.3", "--bias", "-1.0")


def ctr_job(ctr: Path) -> list[str]:
    return [f"data.train={ctr / 'train'}", f"data.test={ctr / 'test'}", "data.epochs=2",
            "data.minibatch=200", "linear.data=partitions", "linear.algorithm=adagrad",
            "linear.lr=0.1"]


def test_planted_model_is_recovered_and_predict_reproduces_metrics(ctr, tmp_path):
    out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), *ctr_job(ctr),
                "linear.save_state=true")
    lines = metrics(out)
    tests = [m for m in lines if m["split"] == "test"]
    assert [m["epoch"] for m in tests] == [1, 2]
    for m in lines:  # the documented keys of every line
        assert {"time", "epoch", "examples", "split"} <= set(m)
    final = tests[-1]
    assert final["final"] and {"logloss", "auc", "accuracy", "keys_per_s"} <= set(final)
    with h5py.File(out / "model.h5") as h5:
        keys, w = h5["keys"][:], h5["weights"][:]
        assert json.loads(h5.attrs["config"])["linear"]["algorithm"] == "adagrad"
        assert "state/acc" in h5
    with h5py.File(ctr / "train" / "true_model.h5") as h5:
        true_keys, true_w = h5["keys"][:], h5["weights"][:]
    # Keys the data used: the learned model's (bias aside). True weight 0 where
    # the planted model has none.
    from mpips.apps.linear.model import BIAS_KEY
    keep = keys != BIAS_KEY
    keys, w = keys[keep], w[keep]
    at = np.minimum(np.searchsorted(true_keys, keys), true_keys.size - 1)
    truth = np.where(true_keys[at] == keys, true_w[at], 0.0)
    corr = float(np.corrcoef(w, truth)[0, 1])
    # The bound: with no signal, the correlation of n pairs is about N(0, 1/n);
    # a learned model must be far above 6 standard deviations of that.
    bound = 6.0 / np.sqrt(keys.size)
    print(f"planted-model recovery: correlation {corr:.3f} over {keys.size} keys "
          f"(chance bound {bound:.3f})")
    assert corr > max(bound, 0.5)
    # predict, without mpiexec, gives the metrics the job logged.
    proc = run_py("-m", "mpips", "predict", "--model", str(out / "model.h5"), "--data",
                  str(ctr / "test"), "--out", str(tmp_path / "p.tsv"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("logloss", "auc", "accuracy", "rows"):
        assert got[key] == pytest.approx(final[key], abs=1e-6), key
    assert len((tmp_path / "p.tsv").read_text().splitlines()) == final["rows"] + 1
    proc = run_py("-m", "mpips", "inspect", str(out / "model.h5"), timeout=60)
    assert proc.returncode == 0 and "nonzero weights" in proc.stdout


def test_one_and_two_workers_agree(ctr, tmp_path):
    finals = []
    for n in (3, 4):  # 1 scheduler, 1 server, then 1 or 2 workers
        out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), *ctr_job(ctr),
                    "data.shuffle=false", n=n, name=f"n{n}")
        finals.append(metrics(out)[-1])
    one, two = finals
    assert one["examples"] == two["examples"]
    # Asynchronous updates in another order: close, not equal.
    assert abs(one["auc"] - two["auc"]) < 0.01, (one["auc"], two["auc"])
    assert abs(one["logloss"] - two["logloss"]) < 0.01



def test_cached_minibatches_train_the_same_weights(ctr, tmp_path):
    """Later epochs train on the minibatches localised in the first (kept in
    memory, [linear] cache_bytes), and every pass sends them as positions into
    their partition's registered key set ([linear] key_sets), registered once:
    with one worker the model is bit for bit the one sent by key and read and
    localised again every epoch. Without room in cache_bytes a partition is
    not read whole: it streams by key, key sets or not."""

    weights, rounds, finals = [], [], []
    for cache, key_sets in ((0, True), (1 << 30, False), (1 << 30, True)):
        out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), *ctr_job(ctr),
                    "data.shuffle=false", "data.epochs=3", f"linear.cache_bytes={cache}",
                    f"linear.key_sets={str(key_sets).lower()}",
                    n=3, name=f"cache{cache}-{key_sets}")
        with h5py.File(out / "model.h5") as h5:
            weights.append((h5["keys"][:], h5["weights"][:]))
        # the test share is kept too: every round scores the same rows alike
        rounds.append(sorted((m["epoch"], m["rows"], m["auc"], m["logloss"])
                             for m in metrics(out) if m["split"] == "test"))
        finals.append(metrics(out)[-1])
    (k0, w0) = weights[0]
    for k, w in weights[1:]:
        assert np.array_equal(k0, k) and np.array_equal(w0, w)
    assert np.abs(w0).sum() > 0
    assert rounds[0] == rounds[1] == rounds[2] and len(rounds[0]) == 3, rounds
    partitions = len(json.loads((ctr / "train" / "manifest.json").read_text())["partitions"])
    # registrations each server received, summed over servers: one server here
    registered = [f["server_keysets_registered"] for f in finals]
    assert registered == [0, 0, partitions], registered
    assert [f["server_keysets_held"] for f in finals] == [0, 0, 0]
    # by key without room or without key sets; with both, every minibatch's
    # pull and push
    by_position = [f["server_requests_by_position"] for f in finals]
    assert by_position[:2] == [0, 0] and by_position[2] > 0, by_position


def test_every_key_set_is_let_go_by_the_end(tmp_path_factory, tmp_path):
    """Two workers, many partitions, five passes: a partition's last pass
    often goes to the other worker than its first, and the worker that
    registered its key set lets go of it at its end."""
    base = planted_ctr(tmp_path_factory.mktemp("parts"), 30000, 1500, 5, 2)
    out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), *ctr_job(base),
                "data.epochs=5", "data.minibatch=100", n=4)
    final = metrics(out)[-1]
    assert final["server_keysets_registered"] >= 18, final  # 18 partitions, each once
    assert final["server_keysets_held"] == 0, final


def test_the_job_says_where_each_workers_time_went(ctr, tmp_path):
    """The job's end: seconds per worker phase (they add up to the worker's
    time), start-up to the first push, and the servers' busy share."""
    from mpips.apps.linear.worker import PHASES
    out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), *ctr_job(ctr), n=4)
    stdout = (tmp_path / "run.stdout").read_text()
    assert "time per worker (mean of 2" in stdout and "ns/nonzero" in stdout, stdout
    assert "s after launch" in stdout and "servers busy" in stdout, stdout
    assert "start-up (s after launch, slowest rank): " in stdout, stdout
    final = metrics(out)[-1]
    steps = list(final["startup_s"])  # each step once, in the order the ranks got there
    for step in ("imported", "job loaded", "MPI ready", "postoffice", "ready", "first push"):
        assert step in steps, final["startup_s"]
    assert steps.index("imported") < steps.index("MPI ready") < steps.index("first push")
    assert final["startup_s"]["first push"] == pytest.approx(final["first_push_s"], abs=1e-3)
    phases = final["worker_phases"]
    assert set(phases) == {*PHASES, "other"} and all(v >= 0 for v in phases.values())
    assert phases["gradient"] > 0 and phases["localise"] > 0 and phases["evaluate"] > 0
    assert phases["read"] > 0  # a partition read whole before training counts too
    assert sum(phases.values()) == pytest.approx(final["worker_seconds"], rel=0.01)
    assert 0 < final["first_push_s"] < 120 and final["server_busy_s"] > 0
    assert final["server_busy_s"] <= final["server_serve_s"]


def test_bench_peers_runs_every_system_on_the_same_rows(ctr, tmp_path):
    pytest.importorskip("vowpalwabbit", reason="pip install vowpalwabbit (mpips[peers])")
    pytest.importorskip("sklearn", reason="pip install scikit-learn")
    out = tmp_path / "peers.jsonl"
    proc = run_py("-m", "mpips", "bench", "peers", str(ROOT / "jobs" / "demo.toml"),
                  "--train", str(ctr / "train"), "--test", str(ctr / "test"), "--np", "3",
                  "--rounds", "1", "--passes", "2", "--json", str(out),
                  "-o", "linear.data=partitions", "-o", "data.epochs=2", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["system"] for r in rows] == ["vw", "mpips", "sklearn liblinear",
                                           "sklearn SGD"]
    for r in rows:  # a planted model: every learner finds it
        assert r["auc"] > 0.7 and r["wall"] > 0 and r["examples"] > 0, r
    assert "x VW" in proc.stdout and "to AUC" in proc.stdout
    assert "mpips, seconds per worker (median of 1 rounds" in proc.stdout, proc.stdout


def test_fewer_partitions_than_workers_is_said_at_start(ctr, tmp_path):
    """The ctr fixture's test split is one partition: two workers, one idles."""
    out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), *ctr_job(ctr),
                f"data.train={ctr / 'test'}", "data.epochs=1")
    log = out.parent / "run.stdout"
    assert log.exists() and "warning: 1 partition(s) for 2 workers" in log.read_text()
    check = run_py("-m", "mpips", "validate", str(ROOT / "jobs" / "demo.toml"), "--np", "4",
                   *[a for o in ctr_job(ctr) for a in ("-o", o)],
                   "-o", f"data.train={ctr / 'test'}")
    assert check.returncode == 0 and "warning: 1 partition(s) for 2 workers" in check.stdout


def test_verify_sha256_refuses_a_changed_partition(ctr, tmp_path):
    import shutil

    data = tmp_path / "train"
    shutil.copytree(ctr / "train", data)
    part = sorted(data.glob("part-*.h5"))[1]
    with h5py.File(part, "r+") as h5:  # valid HDF5, changed data: only the SHA-256 knows
        h5["label"][0] = 1 - h5["label"][0]
    proc = run_mpi(4, "python", "-m", "mpips", "train", str(ROOT / "jobs" / "demo.toml"),
                   *[a for o in ctr_job(ctr) for a in ("-o", o)], "-o", f"data.train={data}",
                   "-o", "data.verify=sha256", "-o", f"job.output={tmp_path / 'out'}",
                   timeout=120)
    assert proc.returncode != 0
    assert f"{part}: checksum mismatch" in proc.stderr, proc.stderr[-2000:]


def test_a_test_partition_that_cannot_be_read_fails_the_job_by_name(ctr, tmp_path):
    """The test share is read in a background thread while training starts:
    its error must still end the job, naming the file."""
    import shutil

    test = tmp_path / "test"
    shutil.copytree(ctr / "test", test)
    part = sorted(test.glob("part-*.h5"))[0]
    part.write_bytes(b"not an HDF5 file")
    proc = run_mpi(4, "python", "-m", "mpips", "train", str(ROOT / "jobs" / "demo.toml"),
                   *[a for o in ctr_job(ctr) for a in ("-o", o)], "-o", f"data.test={test}",
                   "-o", f"job.output={tmp_path / 'out'}", timeout=120)
    assert proc.returncode != 0
    assert f"{part}: not a readable HDF5 file" in proc.stdout + proc.stderr, \
        (proc.stdout + proc.stderr)[-2000:]


def converted(tmp: Path, name: str, rows: int) -> Path:
    out = tmp / name
    proc = run_py("-m", "data_tools", "convert", str(shared_file(f"{name}.libsvm.gz")),
                  "-o", str(out), "--rows-per-partition", str(rows), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("job,train_file,test_file,rows,key,target", [
    ("adult", "adult.train", "adult.test", 4096, "accuracy", 0.850),
    ("news20", "news20.binary.train", "news20.binary.test", 1500, "auc", 0.985)])
def test_real_data_reaches_the_target(tmp_path, job, train_file, test_file, rows, key,
                                      target):
    train_dir = converted(tmp_path, train_file, rows)
    test_dir = converted(tmp_path, test_file, rows)
    out = train(tmp_path, str(ROOT / "jobs" / f"{job}.toml"), f"data.train={train_dir}",
                f"data.test={test_dir}")
    final = metrics(out)[-1]
    print(f"{job}: test {key} {final[key]:.4f} (target {target})")
    assert final[key] >= target


def test_resumed_training_keeps_metrics_and_counts_every_example_once(ctr, tmp_path):
    """SIGUSR1 mid-run (checkpoint, stop), then train --resume: metrics.jsonl
    keeps the first run's lines, every test round is scored once over the
    whole test set (not added again onto the restored sums), and the counts
    go on from the checkpoint's."""
    import signal
    import subprocess
    import threading

    from tests.mpitools import mpi_env, mpiexec_cmd

    out = tmp_path / "run"
    args = ["python", "-m", "mpips", "train", str(ROOT / "jobs" / "demo.toml"),
            "-o", f"job.output={out}", *[a for o in ctr_job(ctr) for a in ("-o", o)],
            "-o", "data.epochs=8", "-o", "linear.eval_every=1",
            "-o", "checkpoint.every_tasks=4", "-o", "job.progress_interval=0.2",
            "-o", "linear.report_interval=0.1"]
    proc = subprocess.Popen(mpiexec_cmd(4, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=mpi_env(), cwd=ROOT)
    guard = threading.Timer(120, proc.kill)
    guard.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "checkpoint 0 written" in line:
                proc.send_signal(signal.SIGUSR1)  # mpiexec passes it to every rank
                break
        rest, _ = proc.communicate(timeout=90)
    finally:
        guard.cancel()
        proc.kill()
    first = "".join(seen) + rest
    assert proc.returncode == 0 and "stopped on SIGUSR1: checkpoint 1 is written" in first, \
        first[-3000:]
    before = metrics(out)
    assert any(m["split"] == "train" for m in before), first[-3000:]
    assert all(m["rows"] == 20000 for m in before if m["split"] == "test")
    again = run_mpi(4, *args, "-o", "checkpoint.resume=true", timeout=120)
    text = again.stdout + again.stderr
    assert again.returncode == 0 and "resumed from checkpoint 1" in text, text[-3000:]
    after = metrics(out)
    # the first run's lines are kept up to its checkpoint; a progress line it
    # wrote between the checkpoint and the stop describes work done again,
    # and is dropped, saying so
    import re
    dropped = re.search(r"(\d+) line\(s\) after the checkpoint dropped", text)
    kept = len(before) - (int(dropped.group(1)) if dropped else 0)
    assert kept > 0 and after[:kept] == before[:kept]
    tests = [m for m in after if m["split"] == "test"]
    assert all(m["rows"] == 20000 for m in tests), [m["rows"] for m in tests]
    rounds = [m["round"] for m in tests]
    assert sorted(rounds) == list(range(8)), rounds  # each round once, none lost
    assert tests[-1]["final"] and tests[-1]["examples"] == 8 * 80000, tests[-1]
    assert f"{8 * 80000} examples in" in text, text[-2000:]
    resumed_train = [m for m in after[len(before):] if m["split"] == "train"]
    assert resumed_train and resumed_train[0]["examples"] >= 80000, resumed_train[:1]


def test_inspect_and_export_name_the_original_feature_ids(tmp_path):
    """A model trained on hashed libsvm ids names its features by those ids:
    the model keeps its data's hashing, and inspect inverts the hash."""
    rng = np.random.default_rng(2)
    lines = []
    for _ in range(4000):
        ids = np.sort(rng.choice(np.arange(1, 200), 8, replace=False))
        strong = rng.random() < 0.5
        ids = np.unique(np.r_[ids, 4242]) if strong else ids  # id 4242 means "1"
        label = int(strong) if rng.random() < 0.95 else 1 - int(strong)
        lines.append(f"{label} " + " ".join(f"{i}:1" for i in ids))
    src = tmp_path / "train.libsvm"
    src.write_text("\n".join(lines) + "\n")
    proc = run_py("-m", "data_tools", "convert", str(src), "-o", str(tmp_path / "d"),
                  "--salt", "77", timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), "linear.data=partitions",
                f"data.train={tmp_path / 'd'}", f"data.test={tmp_path / 'd'}",
                "data.epochs=3", n=3)
    proc = run_py("-m", "mpips", "inspect", str(out / "model.h5"), "--json",
                  "--export", str(tmp_path / "w.tsv"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["hashing"] == "mpips.keys.hash_feature"
    assert info["top"][0]["feature"] == "4242", info["top"][:3]
    rows = [line.split("\t") for line in (tmp_path / "w.tsv").read_text().splitlines()]
    assert rows[0] == ["feature", "key", "weight"] and rows[1][0] == "(intercept)"
    features = {r[0] for r in rows[2:]}
    assert features == {str(i) for i in range(1, 200)} | {"4242"}, sorted(features)[:5]


def test_a_virtual_model_reads_as_the_copied_one_and_moves_with_its_folder(ctr, tmp_path):
    """[linear] model_file = "virtual": model.h5 reads its rows from the
    servers' shards (model.shards/) through HDF5 virtual datasets, nothing
    copied; with one worker it is the copied model bit for bit, predict and
    inspect read it, and it still reads after its folder moved."""
    import shutil
    models = {}
    for layout in ("copy", "virtual"):
        out = train(tmp_path, str(ROOT / "jobs" / "demo.toml"), *ctr_job(ctr), "layout.servers=2",
                    "data.shuffle=false", "linear.save_state=true",
                    f"linear.model_file={layout}", n=4, name=layout)
        with h5py.File(out / "model.h5") as h5:
            models[layout] = {n: h5[n][:] for n in ("keys", "weights", "state/acc")}
            assert h5["weights"].is_virtual == (layout == "virtual")
        shards = sorted(p.name for p in (out / "model.shards").glob("*")) \
            if (out / "model.shards").exists() else []
        assert shards == (["server-rank-1.h5", "server-rank-2.h5"] if layout == "virtual"
                          else [])
        assert not list(out.glob(".model.shard-*"))
    for n in models["copy"]:
        assert np.array_equal(models["copy"][n], models["virtual"][n]), n
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "virtual"), moved)
    proc = run_py("-m", "mpips", "predict", "--model", str(moved / "model.h5"), "--data",
                  str(ctr / "test"), "--out", str(tmp_path / "p.tsv"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = run_py("-m", "mpips", "inspect", str(moved / "model.h5"), timeout=60)
    assert proc.returncode == 0 and "nonzero weights" in proc.stdout
