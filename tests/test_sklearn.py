"""mpips.sklearn.LogisticRegression: a scikit-learn estimator whose fit runs
an mpips job (mpips run in a subprocess) and loads the servers' model."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

sklearn = pytest.importorskip("sklearn", reason="pip install scikit-learn (mpips[linear])")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.linear_model import LogisticRegression as SkLogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.utils.estimator_checks import estimator_checks_generator  # noqa: E402

from mpips.data.writer import Block, write_dataset  # noqa: E402
from mpips.driver import JobFailed  # noqa: E402
from mpips.keys import hash_feature  # noqa: E402
from mpips.sklearn import LogisticRegression  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=12000, n_features=40, n_informative=8,
                               random_state=0)
    X = sp.csr_matrix(np.where(np.abs(X) > 0.3, X, 0.0))  # sparse, with real values
    return X[:9000], y[:9000], X[9000:], y[9000:]


def test_fit_predicts_as_well_as_scikit_learn_and_can_fit_again(data, tmp_path):
    X, y, Xt, yt = data
    names = np.array(["no", "yes"])[y]  # any two labels
    clf = LogisticRegression(n_ranks=4, epochs=5, workdir=str(tmp_path / "w"))
    assert clf.fit(X, names) is clf
    auc = roc_auc_score(yt, clf.predict_proba(Xt)[:, 1])
    ref = roc_auc_score(yt, SkLogisticRegression(max_iter=1000).fit(X, y).predict_proba(Xt)[:, 1])
    assert auc > ref - 0.01, (auc, ref)
    assert clf.coef_.shape == (1, 40) and clf.intercept_.shape == (1,)
    assert set(clf.predict(Xt)) <= {"no", "yes"} and list(clf.classes_) == ["no", "yes"]
    np.testing.assert_allclose(clf.decision_function(Xt), Xt @ clf.coef_[0] + clf.intercept_[0])
    assert (tmp_path / "w" / "job.log").is_file()
    assert (tmp_path / "w" / "run" / "model.h5").is_file()
    again = LogisticRegression(n_ranks=3, epochs=2, algorithm="adagrad", lr=0.5).fit(X, y)
    assert roc_auc_score(yt, again.decision_function(Xt)) > ref - 0.03


def test_warm_start_continues_from_the_previous_model(data, tmp_path):
    X, y, Xt, yt = data
    clf = LogisticRegression(n_ranks=3, epochs=1, warm_start=True, workdir=str(tmp_path))
    first = clf.fit(X, y).coef_.copy()
    clf.fit(X, y)
    log = (tmp_path / "job.log").read_text()
    assert "starting from" in log and "with optimizer state" in log, log[-2000:]
    assert not np.array_equal(first, clf.coef_)
    cold = LogisticRegression(n_ranks=3, epochs=1).fit(X, y)
    # two epochs in two fits fit better than one
    assert roc_auc_score(yt, clf.decision_function(Xt)) >= \
        roc_auc_score(yt, cold.decision_function(Xt)) - 0.002


def test_fit_on_a_converted_data_set_path(tmp_path):
    rng = np.random.default_rng(0)
    rows, nnz = 4000, 10
    ids = rng.integers(0, 500, (rows, nnz)).astype(np.uint64)
    keys = np.sort(hash_feature(ids.reshape(-1), 7).reshape(rows, nnz), axis=1)
    w = rng.normal(size=500)
    labels = (w[ids].sum(axis=1) > 0).astype(np.float32)
    indptr = np.arange(0, rows * nnz + 1, nnz, dtype=np.int64)
    write_dataset(tmp_path / "set", Block(labels, indptr, keys.reshape(-1), None),
                  {"kind": "test"}, 1000, "test")
    clf = LogisticRegression(n_ranks=3, epochs=3).fit(str(tmp_path / "set"))
    assert clf.feature_ids_.dtype == np.uint64 and clf.coef_.shape == (1, clf.feature_ids_.size)
    margin = clf.decision_function(str(tmp_path / "set"))
    assert margin.shape == (rows,) and roc_auc_score(labels, margin) > 0.9
    with pytest.raises(ValueError, match="carries its labels"):
        clf.fit(str(tmp_path / "set"), labels)


def test_errors_are_clear(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        LogisticRegression(n_ranks=3).fit(X, np.arange(y.size) % 3)
    with pytest.raises(ValueError, match="leaves no worker"):
        LogisticRegression(n_ranks=2).fit(X, y)
    # a bad setting is refused before any rank starts, naming the key
    with pytest.raises(ValueError, match=r"\[linear\] algorithm = 'newton' is not one of"):
        LogisticRegression(n_ranks=3, algorithm="newton").fit(X, y)
    with pytest.raises(JobFailed, match=r"mpips job .* ended with exit [1-9]"):  # one that starts
        LogisticRegression(n_ranks=3, mpi_args=("--no-such-launcher-flag",)).fit(X, y)


# scikit-learn's own checks that fit (each a few mpips jobs) or need none; the
# sparse-container checks (about ten fits each) are left to the tests above.
CHECKS = {"check_estimator_sparse_array", "check_estimator_sparse_matrix"}


def _checks():
    est = LogisticRegression(n_ranks=3, epochs=1, minibatch=50)
    for estimator, check in estimator_checks_generator(est, legacy=True, mark="skip"):
        name = getattr(check, "func", check).__name__
        if name not in CHECKS:
            yield pytest.param(estimator, check, id=name)


@pytest.mark.parametrize("estimator,check", _checks())
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_news20_from_csr_fits_twice_in_one_process_as_mpips_run_does(tmp_path):
    """A notebook's loop: news20 as CSR, fit twice in one Python process;
    each reaches the AUC that ``mpips run`` reaches on the same data
    converted by data_tools, with the same settings."""
    import json
    import subprocess
    import sys

    from sklearn.datasets import load_svmlight_files

    from tests.mpitools import ROOT, mpi_env, run_py, shared_file
    train = shared_file("news20.binary.train.libsvm.gz")
    test = shared_file("news20.binary.test.libsvm.gz")
    X, y, Xt, yt = load_svmlight_files([str(train), str(test)])
    aucs = [roc_auc_score(yt, LogisticRegression(n_ranks=4, epochs=5).fit(X, y)
                          .decision_function(Xt)) for _ in range(2)]
    data = {}
    for name, src in (("train", train), ("test", test)):
        data[name] = tmp_path / name
        proc = run_py("-m", "data_tools", "convert", str(src), "-o", str(data[name]),
                      "--rows-per-partition", "3000", timeout=120)
        assert proc.returncode == 0, proc.stderr
    job = tmp_path / "job.toml"
    job.write_text(f"""[job]
name = "news20"
app = "linear"
output = "{tmp_path / 'run'}"
seed = 1
[layout]
servers = 1
[data]
train = "{data['train']}"
test = "{data['test']}"
minibatch = 1000
epochs = 5
[linear]
data = "partitions"
algorithm = "ftrl"
alpha = 0.1
beta = 1.0
lr_scale = "auto"
""")
    proc = subprocess.run([sys.executable, "-m", "mpips", "run", "-n", "4", str(job)],
                          capture_output=True, text=True, timeout=300, env=mpi_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    run_auc = json.loads(lines[-1])["auc"]
    print(f"news20 AUC: estimator fits {aucs[0]:.4f}, {aucs[1]:.4f}; mpips run {run_auc:.4f}")
    assert run_auc > 0.98
    assert all(abs(auc - run_auc) <= 0.005 for auc in aucs), (aucs, run_auc)
