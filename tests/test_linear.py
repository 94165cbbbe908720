"""Sparse linear models without MPI: gradients, handles, metrics, model files,
job file errors. (Multi-rank runs: tests/test_linear_mpi.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpips.apps.linear.model import (
    BIAS_KEY,
    auc_exact,
    auc_from_histograms,
    batch_bytes,
    gradient,
    localised_bytes,
    loss_terms,
    make_batch,
    margin_bins,
    read_model,
    write_model,
)
from mpips.handles import AdaGradL1, DecayingSGD, FTRLProximal
from mpips.kv.store import SortedStore
from tests.mpitools import run_py


def random_rows(rng, rows=60, features=40, nnz=6, values=True):
    """CSR rows with sorted uint64 keys per row, and 0/1 labels."""
    keys_pool = np.sort(np.unique(rng.integers(0, 2**62, features * 2, dtype=np.uint64))[:features])
    ids = np.sort(np.array([rng.choice(features, nnz, replace=False) for _ in range(rows)]),
                  axis=1)
    keys = keys_pool[ids.ravel()]
    vals = rng.normal(size=keys.size).astype(np.float32) if values else None
    indptr = np.arange(rows + 1, dtype=np.int64) * nnz
    labels = (rng.random(rows) < 0.5).astype(np.float32)
    return indptr, keys, vals, labels


def dense_of(indptr, keys, vals, labels, bias):
    """The same rows as a dense matrix over sorted unique keys (+ bias column)."""
    uniq = np.unique(np.r_[keys, [BIAS_KEY]] if bias else keys)
    D = np.zeros((labels.size, uniq.size))
    for r in range(labels.size):
        cols = np.searchsorted(uniq, keys[indptr[r]:indptr[r + 1]])
        D[r, cols] += 1.0 if vals is None else vals[indptr[r]:indptr[r + 1]]
        if bias:
            D[r, np.searchsorted(uniq, BIAS_KEY)] = 1.0
    return uniq, D


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("values", [False, True])
def test_batch_matches_dense(bias, values):
    rng = np.random.default_rng(1)
    indptr, keys, vals, labels = random_rows(rng, values=values)
    batch = make_batch(indptr, keys, vals, labels, bias)
    uniq, D = dense_of(indptr, keys, vals, labels, bias)
    assert np.array_equal(batch.keys, uniq)
    assert np.allclose(batch.X.toarray(), D)
    assert (batch.bias >= 0) == bias and (not bias or batch.keys[batch.bias] == BIAS_KEY)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("values", [False, True])
def test_a_partitions_localised_bytes_are_bounded_before_reading_it(bias, values):
    """What decides whether a partition is read whole ([linear] key_sets)
    bounds what its minibatches then take (a key set's positions included)."""
    rng = np.random.default_rng(6)
    indptr, keys, vals, labels = random_rows(rng, rows=200, features=1000, values=values)
    total = 0
    for a in range(0, 200, 50):  # minibatches of 50 rows
        lo, hi = indptr[a], indptr[a + 50]
        total += batch_bytes(make_batch(indptr[a:a + 51] - lo, keys[lo:hi],
                                        None if vals is None else vals[lo:hi],
                                        labels[a:a + 50], bias))
    bound = localised_bytes(200, keys.size, values, bias)
    assert total <= bound < 3 * total


@pytest.mark.parametrize("values", [False, True])
def test_sparse_rows_products_match_dense_with_empty_rows(values):
    """X @ w and X.T @ r without scipy, empty rows first, inside and last."""
    rng = np.random.default_rng(4)
    counts = np.array([0, 3, 0, 0, 5, 1, 0])
    indptr = np.r_[0, np.cumsum(counts)]
    keys = np.concatenate([np.sort(rng.choice(50, c, replace=False)) for c in counts]
                          ).astype(np.uint64)
    vals = rng.normal(size=keys.size) if values else None
    labels = rng.integers(0, 2, counts.size)
    batch = make_batch(indptr, keys, vals, labels, bias=False)
    _, D = dense_of(indptr, keys, vals, labels, bias=False)
    w, r = rng.normal(size=D.shape[1]), rng.normal(size=D.shape[0])
    assert np.allclose(batch.X @ w, D @ w) and np.allclose(batch.X.rmatvec(r), D.T @ r)
    assert batch.X.nnz == keys.size and batch.X.shape == D.shape
    empty = make_batch(np.zeros(3, np.int64), np.empty(0, np.uint64), None,
                       np.array([0, 1]), bias=False)
    assert (empty.X @ np.zeros(0)).tolist() == [0.0, 0.0]
    assert empty.X.rmatvec(np.ones(2)).dtype == np.float64


@pytest.mark.parametrize("loss", ["logistic", "squared", "hinge"])
def test_gradient_matches_dense_finite_differences(loss):
    rng = np.random.default_rng(2)
    indptr, keys, vals, labels = random_rows(rng)
    batch = make_batch(indptr, keys, vals, labels, bias=True)
    w = rng.normal(scale=0.3, size=batch.keys.size)
    l2 = 0.1
    grad, loss_sum, _ = gradient(loss, batch.X, batch.y, w, l2)
    D = batch.X.toarray()

    def objective(v):  # dense numpy reference: mean loss + l2/2 |v|^2
        return loss_terms(loss, D @ v, batch.y).mean() + 0.5 * l2 * v @ v

    eps = 1e-6
    numeric = np.array([(objective(w + eps * e) - objective(w - eps * e)) / (2 * eps)
                        for e in np.eye(w.size)])
    assert np.isclose(loss_sum, loss_terms(loss, D @ w, batch.y).sum())
    # The hinge is not differentiable at margin 1; random data keeps clear of it.
    assert np.allclose(grad, numeric, atol=1e-5), np.abs(grad - numeric).max()


def planted_problem(seed=3, rows=4000, features=200, nnz=10, relevant=20):
    """Rows whose labels depend on ``relevant`` of the features."""
    rng = np.random.default_rng(seed)
    w_true = np.zeros(features)
    w_true[:relevant] = rng.normal(scale=2.0, size=relevant)
    ids = np.sort(np.array([rng.choice(features, nnz, replace=False) for _ in range(rows)]),
                  axis=1)
    margin = w_true[ids].sum(axis=1)
    y = (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(np.float32)
    keys = np.arange(features, dtype=np.uint64)[ids.ravel()] + np.uint64(1)
    indptr = np.arange(rows + 1, dtype=np.int64) * nnz
    return indptr, keys, y, w_true


def train_in_process(handle, epochs=3, minibatch=100, ftrl_sums=False, seed=3):
    """The worker loop without kv: gradients go into a server store directly."""
    indptr, keys, y, _ = planted_problem(seed)
    store = SortedStore(1, "float32", handle)
    full = make_batch(indptr, keys, None, y, bias=True)
    losses = []

    def full_loss():
        w = store.pull(full.keys)[:, 0].astype(np.float64)
        return loss_terms("logistic", full.X @ w, full.y).mean()

    losses.append(full_loss())
    for _ in range(epochs):
        for a in range(0, y.size, minibatch):
            b = min(y.size, a + minibatch)
            lo, hi = indptr[a], indptr[b]
            batch = make_batch(indptr[a:b + 1] - lo, keys[lo:hi], None, y[a:b], bias=True)
            w = store.pull(batch.keys)[:, 0].astype(np.float64)
            g, _, _ = gradient("logistic", batch.X, batch.y, w)
            store.push(batch.keys, (g * (batch.rows if ftrl_sums else 1)).astype(np.float32))
        losses.append(full_loss())
    return losses, store


@pytest.mark.parametrize("handle,sums", [
    (DecayingSGD(lr=0.5, decay=0.01), False),
    (AdaGradL1(lr=0.1), False),
    (FTRLProximal(alpha=0.1, beta=1.0, l1=0.1, l2=0.1), True)])
def test_each_algorithm_lowers_the_loss(handle, sums):
    losses, _ = train_in_process(handle, ftrl_sums=sums)
    assert losses[0] == pytest.approx(np.log(2))  # all weights start at 0
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(b <= a + 1e-3 for a, b in zip(losses, losses[1:], strict=False)), losses


@pytest.mark.parametrize("make,sums", [
    (lambda l1: AdaGradL1(lr=0.1, l1=l1), False),
    (lambda l1: FTRLProximal(alpha=0.1, beta=1.0, l1=l1), True),
    (lambda l1: DecayingSGD(lr=0.5, l1=l1), False)])
def test_l1_gives_sparsity(make, sums):
    _, dense = train_in_process(make(0.0), ftrl_sums=sums)
    _, sparse = train_in_process(make(0.01 if not sums else 20.0), ftrl_sums=sums)
    nz_dense = np.count_nonzero(dense.values)
    nz_sparse = np.count_nonzero(sparse.values)
    assert nz_dense > 0.9 * len(dense)
    assert nz_sparse < 0.6 * nz_dense, (nz_sparse, nz_dense)
    # L1 drops features with small true weights rather than at random.
    w_true = planted_problem()[3]
    features = sparse.keys != BIAS_KEY
    feature = (sparse.keys[features] - np.uint64(1)).astype(np.int64)
    kept = sparse.values[features, 0] != 0
    assert np.abs(w_true[feature[kept]]).mean() > 1.5 * np.abs(w_true[feature[~kept]]).mean()


def test_ftrl_matches_the_per_coordinate_formula():
    h = FTRLProximal(alpha=0.5, beta=1.0, l1=0.2, l2=0.3)
    value = np.zeros((3, 1))
    state = {"z": np.zeros((3, 1)), "n": np.zeros((3, 1))}
    z = n = np.zeros(3)
    w = np.zeros(3)
    for g in ([1.0, -0.1, 0.5], [0.3, -0.2, -2.0]):
        g = np.array(g)
        h(value, g[:, None], state)
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / 0.5
        z, n = z + g - sigma * w, n + g * g
        w = np.where(np.abs(z) <= 0.2, 0.0,
                     -(z - np.sign(z) * 0.2) / ((1.0 + np.sqrt(n)) / 0.5 + 0.3))
        assert np.allclose(value[:, 0], w)


def test_auc_exact_and_histogram():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    y = (rng.random(5000) < 0.3).astype(float)
    margin = np.round(rng.normal(size=y.size) + 1.5 * y, 1)  # many ties
    assert auc_exact(margin, y) == pytest.approx(sk.roc_auc_score(y, margin), abs=1e-12)
    b = margin_bins(margin, 64, 8.0)
    auc, bound = auc_from_histograms(np.bincount(b[y > 0.5], minlength=64),
                                     np.bincount(b[y <= 0.5], minlength=64))
    assert abs(auc - auc_exact(margin, y)) <= bound + 1e-12 and bound < 0.05


def test_model_file_round_trip_and_margins(tmp_path):
    rng = np.random.default_rng(5)
    indptr, keys, vals, labels = random_rows(rng)
    indptr = np.r_[indptr[:3], indptr[2], indptr[3:]]  # an empty row
    labels = np.r_[labels[:2], [1.0], labels[2:]]
    uniq, D = dense_of(indptr, keys, vals, labels, bias=True)
    w = rng.normal(size=uniq.size)
    path = tmp_path / "m.h5"
    shuffle = rng.permutation(uniq.size)
    write_model(path, uniq[shuffle], w[shuffle], {"acc": w[shuffle] ** 2},
                {"loss": "logistic", "config": {"job": {"name": "t"}}})
    m = read_model(path)
    assert np.array_equal(m.keys, uniq) and np.allclose(m.state["acc"], w ** 2)
    assert json.loads(m.attrs["config"]) == {"job": {"name": "t"}}
    assert np.allclose(m.margins(indptr, keys, vals), D @ w)
    with pytest.raises(ValueError, match="model file not found"):
        read_model(tmp_path / "nope.h5")


@pytest.mark.parametrize("text,message", [
    ('[linear]\nalgorithm = "newton"\n',
     "[linear] algorithm = 'newton' is not one of 'sgd', 'adagrad', 'ftrl'"),
    ("[linear]\nlr = -0.5\n", "[linear] lr = -0.5 must be > 0"),
    ("[linear]\nalpha = 0\n", "[linear] alpha = 0.0 must be > 0"),
    ('[linear]\ndata = "partitions"\n', "[data] train is empty"),
    ('[linear]\ndata = "partitions"\n[data]\ntrain = "no/such/dir"\n',
     "[data] train = 'no/such/dir': no/such/dir/manifest.json: no manifest"),
])
def test_bad_job_files_name_key_and_file(tmp_path, text, message):
    job = tmp_path / "bad.toml"
    job.write_text(text)
    proc = run_py("-m", "mpips", "train", str(job), timeout=60)
    assert proc.returncode != 0
    assert f"{job}: {message}" in proc.stderr, proc.stderr


def test_missing_test_path_is_named(tmp_path):
    from data_tools.convert import OutputSpec
    from data_tools.synth import synth_ctr  # a tiny real training set

    synth_ctr(OutputSpec(str(tmp_path / "d"), 1000, 1 << 30, None, False), rows=100,
              fields=3, vocab=50, zipf=1.1, density=0.5, weight_scale=1.0, bias=0.0,
              seed=0, chunk_rows=100)
    job = tmp_path / "bad.toml"
    job.write_text(f'[linear]\ndata = "partitions"\n[data]\ntrain = "{tmp_path / "d"}"\n'
                   'test = "missing-test"\n')
    proc = run_py("-m", "mpips", "train", str(job), timeout=60)
    assert proc.returncode != 0 and f"{job}: [data] test = 'missing-test'" in proc.stderr


def test_lr_scale_auto_divides_the_rate_by_the_mean_feature_value(tmp_path):
    """[linear] lr_scale = "auto": the handle's rate is in units of the data's
    feature values (mean |value| of the first partition; 1 for binary data)."""
    from mpips import config
    from mpips.apps.linear.app import LinearApp

    rows = {"scaled": "1 1:0.25 2:0.75\n0 2:0.5 3:0.5\n", "binary": "1 1:1 2:1\n0 3:1\n"}
    for name, text in rows.items():
        src = tmp_path / f"{name}.libsvm"
        src.write_text(text * 50)
        proc = run_py("-m", "data_tools", "convert", str(src), "-o", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
    expect = {"scaled": 0.5, "binary": 1.0}
    for name, scale in expect.items():
        for mode, want in (("auto", scale), ("none", 1.0)):
            cfg = config.load(None, [f"data.train={tmp_path / name}", "linear.data=partitions",
                                     f"linear.lr_scale={mode}", "linear.alpha=0.1"])
            app = LinearApp(cfg)
            assert app.lr_scale == pytest.approx(want)
            handle = app.tables()[0].handle
            assert isinstance(handle, FTRLProximal)  # the default update
            assert handle.alpha == pytest.approx(0.1 / want)


def test_model_assembled_from_shard_slices_is_the_one_written_whole(tmp_path, monkeypatch):
    """model.h5 is copied range by range from the servers' shards, a slice
    at a time (the scheduler never holds the model): the same file contents
    as writing the concatenation at once."""
    import h5py

    from mpips.apps.linear import model as model_module
    monkeypatch.setattr(model_module, "COPY_ROWS", 7)  # many slices per range
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**64 - 1, 500, dtype=np.uint64))
    w = rng.normal(size=keys.size)
    acc = rng.random(keys.size).astype(np.float32)
    cuts = [0, 90, 91, 91, 300, keys.size]  # ranges of 90, 1, 0, 209 and 200 keys
    # two servers, ranges dealt in turn: server 0 holds ranges 0, 2, 4
    shards = {0: [0, 2, 4], 1: [1, 3]}
    pieces = {}
    for server, ranges in shards.items():
        idx = np.concatenate([np.arange(cuts[r], cuts[r + 1]) for r in ranges])
        f = tmp_path / f"shard-{server}.h5"
        model_module.write_model(f, keys[idx], w[idx], {"acc": acc[idx]})
        start = 0
        for r in ranges:
            pieces[r] = (str(f), start, cuts[r + 1] - cuts[r])
            start += cuts[r + 1] - cuts[r]
    model_module.copy_model(tmp_path / "copied.h5", [pieces[r] for r in sorted(pieces)],
                            {"loss": "logistic"})
    model_module.write_model(tmp_path / "whole.h5", keys, w, {"acc": acc}, {"loss": "logistic"})
    with h5py.File(tmp_path / "copied.h5") as a, h5py.File(tmp_path / "whole.h5") as b:
        for name in ("keys", "weights", "state/acc"):
            assert a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name][:], b[name][:])
        assert dict(a.attrs) == dict(b.attrs)
    m = model_module.read_model(tmp_path / "copied.h5")
    assert m.loss == "logistic" and np.all(np.diff(m.keys.astype(np.float64)) > 0)


def test_a_model_with_a_range_missing_is_refused():
    from mpips.apps.linear.app import model_pieces
    shards = [{"model_shard": "a.h5", "model_ranges": [[0, 0, 5], [2, 5, 3]]},
              {"model_shard": "b.h5", "model_ranges": [[1, 0, 4]]}]
    assert model_pieces(shards, 3) == [("a.h5", 0, 5), ("b.h5", 0, 4), ("a.h5", 5, 3)]
    with pytest.raises(RuntimeError, match=r"ranges \[3\] of 4 were saved by no server"):
        model_pieces(shards, 4)


def test_kept_minibatches_share_one_budget():
    """[linear] cache_bytes bounds every set a worker keeps together (its
    training partitions and its test share): a set is kept whole or not at
    all, and a dropped set gives its bytes back."""
    from mpips.apps.linear.model import BatchCache
    cache = BatchCache(100)
    assert list(cache.fill("a", [30, 30], size=int)) == [30, 30]
    assert cache.get("a") == [30, 30] and cache.used == 60
    assert list(cache.fill("b", [20, 30], size=int)) == [20, 30]  # 110 > 100
    assert cache.get("b") is None and cache.used == 60
    list(cache.fill("c", [40], size=int, want=False))
    assert cache.get("c") is None
    cache.drop("a")
    assert cache.used == 0
    list(cache.fill("b", [20, 30], size=int))
    assert cache.get("b") == [20, 30] and cache.used == 50


def test_bench_peers_takes_several_rank_counts_and_gives_both_ratios():
    import argparse

    from mpips.bench.peers import rank_counts, table
    assert rank_counts("4") == [4] and rank_counts("3,4") == [3, 4]
    for bad in ("2", "3,x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            rank_counts(bad)
    runs = [{"system": "vw", "wall": 1.0, "to_target": 1.0, "auc": 0.9, "logloss": 0.3,
             "train_seconds": 1.0, "examples": 100},
            {"system": "mpips -n 3", "wall": 3.0, "to_target": 1.5, "auc": 0.91,
             "logloss": 0.3, "train_seconds": 2.0, "examples": 100},
            {"system": "mpips -n 4", "wall": 4.0, "to_target": None, "auc": 0.85,
             "logloss": 0.4, "train_seconds": 2.0, "examples": 100}]
    lines = table(runs, 0.899).splitlines()
    assert "x VW to AUC" in lines[0]
    three, four = lines[2].split(), lines[3].split()
    assert three[:3] == ["mpips", "-n", "3"] and three[-2:] == ["3.00", "1.50"]
    assert four[-2:] == ["4.00", "-"] and "not reached" in lines[3]
