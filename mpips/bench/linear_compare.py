"""mpips against scikit-learn on news20.binary: wall time to reach a test AUC.

    python -m mpips.bench.linear_compare [--target 0.985] [--np 4] [--repeat 2]

(``jobs/compare_news20.sh`` converts the data first.) In one run, on the same
machine and data, it measures:

- mpips: ``mpiexec -n NP python -m mpips train jobs/news20.toml`` (1 scheduler,
  1 server, NP-2 workers); the time to target is the ``time`` of the first
  test line of metrics.jsonl with ``auc >= target`` (seconds since the ranks
  started: training and the evaluations before it, not MPI start-up), and
  the whole command's wall time is shown next to it;
- scikit-learn SGDClassifier(log_loss): ``partial_fit`` one epoch at a time,
  the test AUC after each; time to target = fit time summed over epochs until
  then (the evaluations not counted);
- scikit-learn LogisticRegression: liblinear to convergence (its one time), and
  lbfgs with max_iter doubling until the AUC reaches the target (the time of
  that fit).

Reading the data: sklearn's ``load_svmlight_file`` time is shown apart; mpips
reads the converted HDF5 partitions inside its time. scikit-learn runs on one
core; mpips runs NP processes on however many cores there are (print says).
Each measurement is repeated ``--repeat`` times; the table shows the best and
the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _mpips(np_: int, target: float, out: str, epochs: int) -> tuple[float | None, float, float]:
    env = dict(os.environ, OMPI_MCA_mpi_yield_when_idle="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = ["mpiexec", "-n", str(np_), "--oversubscribe", sys.executable, "-m", "mpips",
           "train", str(ROOT / "jobs" / "news20.toml"), "-o", f"job.output={out}",
           "-o", f"data.epochs={epochs}", "-o", "linear.save_model=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"mpips failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    tests = [json.loads(x) for x in open(Path(out) / "metrics.jsonl")]
    tests = sorted((t for t in tests if t["split"] == "test"), key=lambda t: t["time"])
    hit = next((t["time"] for t in tests if t["auc"] >= target), None)
    return hit, wall, max(t["auc"] for t in tests)


def _sgd(X, y, Xt, yt, target: float, epochs: int) -> tuple[float | None, float]:
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import roc_auc_score

    clf = SGDClassifier(loss="log_loss", alpha=1e-5, random_state=0)
    spent, best = 0.0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        clf.partial_fit(X, y, classes=np.array([0.0, 1.0]))
        spent += time.perf_counter() - t0
        auc = roc_auc_score(yt, clf.decision_function(Xt))
        best = max(best, auc)
        if auc >= target:
            return spent, auc
    return None, best


def _liblinear(X, y, Xt, yt) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    t0 = time.perf_counter()
    clf = LogisticRegression(solver="liblinear").fit(X, y)
    return time.perf_counter() - t0, roc_auc_score(yt, clf.decision_function(Xt))


def _lbfgs(X, y, Xt, yt, target: float) -> tuple[float | None, float, int]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    best = 0.0
    for iters in (1, 2, 4, 8, 16, 32, 64, 128):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            clf = LogisticRegression(solver="lbfgs", max_iter=iters).fit(X, y)
            spent = time.perf_counter() - t0
        auc = roc_auc_score(yt, clf.decision_function(Xt))
        best = max(best, auc)
        if auc >= target:
            return spent, auc, iters
    return None, best, 128


def _fmt(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "not reached"
    return f"{min(got):.2f} / {statistics.median(got):.2f}" + \
        ("" if len(got) == len(values) else f" ({len(values) - len(got)} missed)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpips.bench.linear_compare",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=0.985, help="test AUC to reach")
    p.add_argument("--np", type=int, default=4, help="mpiexec ranks for mpips")
    p.add_argument("--epochs", type=int, default=5, help="most epochs (mpips, SGD)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    args = p.parse_args(argv)
    from sklearn.datasets import load_svmlight_file

    t0 = time.perf_counter()
    X, y = load_svmlight_file(f"{args.shared}/news20.binary.train.libsvm.gz", dtype=np.float64)
    Xt, yt = load_svmlight_file(f"{args.shared}/news20.binary.test.libsvm.gz",
                                n_features=X.shape[1])
    load = time.perf_counter() - t0
    for m in (X, Xt):  # sklearn's SGD wants 32-bit sparse indices
        m.indices, m.indptr = m.indices.astype(np.int32), m.indptr.astype(np.int32)
    y, yt = (y > 0).astype(float), (yt > 0).astype(float)
    rows = {"mpips": [], "mpips wall": [], "sgd": [], "liblinear": [], "lbfgs": []}
    aucs: dict[str, float] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            hit, wall, auc = _mpips(args.np, args.target, out, args.epochs)
        rows["mpips"].append(hit)
        rows["mpips wall"].append(wall)
        aucs["mpips"] = auc
        hit, aucs["sgd"] = _sgd(X, y, Xt, yt, args.target, args.epochs)
        rows["sgd"].append(hit)
        spent, aucs["liblinear"] = _liblinear(X, y, Xt, yt)
        rows["liblinear"].append(spent if aucs["liblinear"] >= args.target else None)
        hit, aucs["lbfgs"], iters = _lbfgs(X, y, Xt, yt, args.target)
        rows["lbfgs"].append(hit)
    load1 = os.getloadavg()[0]
    print(f"news20.binary: {X.shape[0]} train / {Xt.shape[0]} test rows, {X.shape[1]} "
          f"features; target test AUC {args.target}; {os.cpu_count()} cores, load average "
          f"{load1:.1f}; {args.repeat} repeats (best / median seconds)")
    print(f"sklearn load_svmlight_file (train + test, not in the times below): {load:.2f} s")
    print(f"{'method':58s} {'time to target (s)':>22s} {'best test AUC':>14s}")
    table = [
        (f"mpips adagrad, mpiexec -n {args.np} (2 workers), first eval >= target",
         rows["mpips"], aucs["mpips"]),
        ("mpips, whole mpiexec command incl. start-up (all epochs)", rows["mpips wall"],
         aucs["mpips"]),
        ("sklearn SGDClassifier(log_loss) partial_fit per epoch", rows["sgd"], aucs["sgd"]),
        ("sklearn LogisticRegression liblinear (to convergence)", rows["liblinear"],
         aucs["liblinear"]),
        (f"sklearn LogisticRegression lbfgs (max_iter {iters})", rows["lbfgs"],
         aucs["lbfgs"]),
    ]
    for name, values, auc in table:
        print(f"{name:58s} {_fmt(values):>22s} {auc:14.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
