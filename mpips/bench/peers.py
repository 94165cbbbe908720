"""``python -m mpips bench peers``: sparse logistic regression by mpips, Vowpal
Wabbit and scikit-learn on the same converted data and the same test rows,
interleaved round by round, as one table.

    python -m mpips bench peers jobs/news20.toml --train data/news20 \\
        --test data/news20-test [--np 4 | --np 3,4] [--rounds 3] [--passes 5] [-o k=v ...]

Each round runs, one after the other (never two at once):

- mpips: ``mpiexec -n NP python -m mpips train JOB`` with the job's settings
  (overrides with ``-o``), launched as ``mpips run`` launches, once per rank
  count of ``--np`` (where ranks outnumber cores, fewer can be faster);
  wall time is the whole command, start-up included;
  time to target = start-up (wall minus the job's own seconds) plus the
  ``time`` of the first test line of metrics.jsonl at or above the target;
- Vowpal Wabbit (``pip install vowpalwabbit``, or ``mpips[peers]``): its
  defaults (adaptive, normalized, invariant updates), logistic loss,
  ``--passes P`` over a cache, 2^24 weights, one core; features are the
  partitions' uint64 keys (so both see the same features); train time is
  parsing plus learning from the text file, which is written once, before
  the clock starts; the test AUC is scored once at the end;
- scikit-learn: ``LogisticRegression(solver="liblinear")`` (one core, to
  convergence) and ``SGDClassifier(log_loss)`` (its defaults) one ``partial_fit`` per pass,
  on CSR matrices built from the same partitions before the clock starts.

The target AUC is ``--target``, else VW's final AUC of the first round minus
0.001. The table gives min / median / max over rounds of the wall time, the
time to target, the final test AUC and logloss, training examples per second
(examples over training time) and the ratios of the median wall time and the
median time to target to VW's median (VW reaches the target at its end).
Load averages are printed next to the table: compare on a quiet machine.
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
from typing import Any

import numpy as np

from ..data import load_manifest
from ..data.reader import read_minibatches
from . import append_jsonl

ROOT = Path(__file__).resolve().parents[2]


# ---- the data, read once ---------------------------------------------------------
def read_rows(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(indptr, keys, values or None, labels in {0, 1}) of a converted data set."""
    indptr, keys, values, labels = [np.zeros(1, np.int64)], [], [], []
    base = 0
    for mb in read_minibatches(load_manifest(folder).paths, 1 << 16, 1 << 16):
        indptr.append(mb.indptr[1:] + base)
        base += int(mb.indptr[-1])
        keys.append(mb.keys)
        values.append(np.ones(mb.keys.size, np.float32) if mb.values is None else mb.values)
        labels.append(mb.labels)
    vals = np.concatenate(values).astype(np.float32)
    return (np.concatenate(indptr), np.concatenate(keys), None if np.all(vals == 1) else vals,
            (np.concatenate(labels) > 0.5).astype(np.float64))


def write_vw(rows: tuple, path: Path, block_rows: int = 50_000) -> None:
    """VW text: ``1 |f <key hex>:<value> ...`` (labels -1 / 1), written a
    block of rows at a time (the text of 1e7 rows would not fit in memory)."""
    indptr, keys, vals, y = rows
    with open(path, "w") as f:
        for lo in range(0, y.size, block_rows):
            hi = min(y.size, lo + block_rows)
            a, b = int(indptr[lo]), int(indptr[hi])
            names = np.char.mod("%x", keys[a:b])
            if vals is not None:
                names = np.char.add(np.char.add(names, ":"), np.char.mod("%.7g", vals[a:b]))
            cuts = indptr[lo:hi + 1] - a
            f.write("".join(("1 |f " if y[i] > 0 else "-1 |f ")
                            + " ".join(names[cuts[i - lo]:cuts[i - lo + 1]].tolist()) + "\n"
                            for i in range(lo, hi)))


def csr(rows: tuple, columns: np.ndarray):
    import scipy.sparse as sp
    indptr, keys, vals, y = rows
    data = np.ones(keys.size) if vals is None else vals.astype(np.float64)
    return sp.csr_matrix((data, np.searchsorted(columns, keys).astype(np.int32),
                          indptr.astype(np.int32)), shape=(y.size, columns.size))


def auc_logloss(margin: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from ..apps.linear.model import auc_exact, logloss_terms
    return auc_exact(margin, y), float(logloss_terms(margin, y).mean())


# ---- one run of each system -------------------------------------------------------
def run_mpips(job: str, train: str, test: str, np_: int, overrides: list[str],
              target: float | None) -> dict[str, Any]:
    from ..launch import build
    with tempfile.TemporaryDirectory() as out:
        program = [sys.executable, "-m", "mpips", "train", job, "-o", f"data.train={train}",
                   "-o", f"data.test={test}", "-o", f"job.output={out}",
                   "-o", "linear.save_model=false", *[a for o in overrides for a in ("-o", o)]]
        launch = build(np_, program)  # the flags and environment mpips run gives a user
        cmd, env = launch.cmd, launch.env
        t0 = time.perf_counter()
        env["MPIPS_LAUNCH_TIME"] = f"{time.time():.6f}"  # the ranks time start-up from here
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"mpips failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-2000:]}")
        lines = [json.loads(x) for x in open(Path(out) / "metrics.jsonl")]
    tests = sorted((t for t in lines if t["split"] == "test"), key=lambda t: t["time"])
    final = next(t for t in lines if t.get("final"))
    startup = wall - final["job_seconds"]
    hit = None if target is None else next(
        (startup + t["time"] for t in tests if t["auc"] >= target), None)
    return {"system": "mpips", "ranks": np_, "wall": wall, "to_target": hit, "auc": final["auc"],
            "logloss": final.get("logloss"), "train_seconds": final["job_seconds"],
            "examples": final["examples"], "startup": startup,
            "first_push": final.get("first_push_s"), "phases": final.get("worker_phases"),
            "worker_seconds": final.get("worker_seconds")}


def run_vw(train_vw: Path, test_vw: Path, test_y: np.ndarray, passes: int, examples: int,
           workdir: Path) -> dict[str, Any]:
    from vowpalwabbit import Workspace

    model, cache, preds = workdir / "vw.model", workdir / "vw.cache", workdir / "vw.pred"
    t0 = time.perf_counter()
    vw = Workspace(f"-d {train_vw} --loss_function logistic --passes {passes} -c -k "
                   f"--cache_file {cache} -b 24 --holdout_off -f {model} --quiet")
    vw.run_parser()
    vw.finish()
    spent = time.perf_counter() - t0
    scorer = Workspace(f"-d {test_vw} -t -i {model} -p {preds} --quiet")
    scorer.run_parser()
    scorer.finish()
    margin = np.loadtxt(preds, dtype=np.float64, ndmin=1)
    auc, logloss = auc_logloss(margin, test_y)
    return {"system": "vw", "wall": spent, "to_target": None, "auc": auc,
            "logloss": logloss, "train_seconds": spent, "examples": examples * passes}


def run_liblinear(X, y, Xt, yt) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    clf = LogisticRegression(solver="liblinear").fit(X, y)
    spent = time.perf_counter() - t0
    auc, logloss = auc_logloss(clf.decision_function(Xt), yt)
    return {"system": "sklearn liblinear", "wall": spent, "to_target": None, "auc": auc,
            "logloss": logloss, "train_seconds": spent, "examples": X.shape[0]}


def run_sgd(X, y, Xt, yt, passes: int, target: float | None) -> dict[str, Any]:
    from sklearn.linear_model import SGDClassifier

    clf = SGDClassifier(loss="log_loss", random_state=0)  # its defaults
    spent, hit = 0.0, None
    for _ in range(passes):
        t0 = time.perf_counter()
        clf.partial_fit(X, y, classes=np.array([0.0, 1.0]))
        spent += time.perf_counter() - t0
        auc, logloss = auc_logloss(clf.decision_function(Xt), yt)
        if hit is None and target is not None and auc >= target:
            hit = spent
    return {"system": "sklearn SGD", "wall": spent, "to_target": hit, "auc": auc,
            "logloss": logloss, "train_seconds": spent, "examples": X.shape[0] * passes}


# ---- the table ----------------------------------------------------------------------
def _mmm(values: list[float | None], fmt: str = ".2f") -> str:
    got = sorted(v for v in values if v is not None)
    if not got:
        return "not reached"
    text = f"{got[0]:{fmt}} / {statistics.median(got):{fmt}} / {got[-1]:{fmt}}"
    missed = len(values) - len(got)
    return text + (f" ({missed} missed)" if missed else "")


def table(results: list[dict[str, Any]], target: float | None) -> str:
    """min / median / max per system; the ratios are of medians to VW's
    (wall time, and time to the target AUC: VW reaches it at its end)."""
    systems = list(dict.fromkeys(r["system"] for r in results))
    vw = [r["wall"] for r in results if r["system"] == "vw"]
    vw_median = statistics.median(vw) if vw else None
    to = f"to AUC {target:.4f} s" if target is not None else "to target s"
    lines = [f"{'system':18s} {'wall s (min/med/max)':>22s} {to:>24s} "
             f"{'test AUC':>24s} {'logloss':>8s} {'examples/s':>11s} {'x VW':>6s} "
             f"{'x VW to AUC':>11s}"]
    for s in systems:
        rs = [r for r in results if r["system"] == s]
        wall = [r["wall"] for r in rs]
        rate = statistics.median(r["examples"] / max(r["train_seconds"], 1e-9) for r in rs)
        ratio = f"{statistics.median(wall) / vw_median:6.2f}" if vw_median else "     -"
        reached = [r["to_target"] for r in rs if r["to_target"] is not None]
        to_ratio = (f"{statistics.median(reached) / vw_median:11.2f}"
                    if vw_median and len(reached) == len(rs) else f"{'-':>11s}")
        losses = [r["logloss"] for r in rs if r["logloss"] is not None]
        lines.append(f"{s:18s} {_mmm(wall):>22s} {_mmm([r['to_target'] for r in rs]):>24s} "
                     f"{_mmm([r['auc'] for r in rs], '.4f'):>24s} "
                     f"{statistics.median(losses) if losses else float('nan'):8.4f} "
                     f"{rate:11.4g} {ratio} {to_ratio}")
    return "\n".join(lines)


def rank_counts(text: str) -> list[int]:
    """``--np``: one rank count or several, comma-separated (each at least 3)."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--np {text!r}: rank counts, e.g. 4 or 3,4") from None
    if not counts or min(counts) < 3:
        raise argparse.ArgumentTypeError(f"--np {text!r}: a job needs at least 3 ranks "
                                         "(scheduler, server, worker)")
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="mpips job file (app 'linear')")
    p.add_argument("--train", required=True, help="converted training data folder")
    p.add_argument("--test", required=True, help="converted test data folder")
    p.add_argument("--np", type=rank_counts, default=[4], metavar="N[,N...]",
                   help="mpiexec ranks for mpips (default 4); several, e.g. 3,4: each is "
                        "a system of its own in every round (mpips -n 3, mpips -n 4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--passes", type=int, default=5, help="VW and SGD passes (default 5)")
    p.add_argument("--target", type=float, help="test AUC to reach (default: VW's first "
                   "AUC - 0.001)")
    p.add_argument("--skip", default="", help="comma-separated systems to leave out "
                   "(vw, liblinear, sgd)")
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="mpips job override (repeatable)")
    p.add_argument("--json", help="append one JSON line per run to this file")


def run(args: argparse.Namespace) -> int:
    skip = {s for s in args.skip.split(",") if s}
    if "vw" not in skip:
        try:
            import vowpalwabbit  # noqa: F401
        except ImportError:
            print("mpips: bench peers: Vowpal Wabbit is not installed (pip install "
                  "vowpalwabbit, or pip install 'mpips[peers]'); add --skip vw to run "
                  "without it", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    from ..launch import compile_bytecode
    compile_bytecode()  # as mpips run does before a job starts
    train, test = read_rows(args.train), read_rows(args.test)
    X = Xt = None
    if "liblinear" not in skip or "sgd" not in skip:  # scikit-learn's matrices
        columns = np.unique(np.concatenate([train[1], test[1]]))
        X, Xt = csr(train, columns), csr(test, columns)
    features = int(np.unique(train[1]).size) if X is None else X.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_vw, test_vw = work / "train.vw", work / "test.vw"
        if "vw" not in skip:
            write_vw(train, train_vw)
            write_vw(test, test_vw)
        print(f"bench peers: {train[3].size} train / {test[3].size} test rows, "
              f"{features} features; data read and written for every system in "
              f"{time.perf_counter() - t0:.1f} s (not timed below); {os.cpu_count()} cores",
              flush=True)
        target, results = args.target, []
        loads = [os.getloadavg()[0]]
        for rnd in range(args.rounds):
            batch = []
            if "vw" not in skip:
                batch.append(run_vw(train_vw, test_vw, test[3], args.passes, train[3].size,
                                    work))
                if target is None:
                    target = batch[-1]["auc"] - 0.001
            for ranks in args.np:
                batch.append(run_mpips(args.job, args.train, args.test, ranks, args.overrides,
                                       target))
                if len(args.np) > 1:
                    batch[-1]["system"] = f"mpips -n {ranks}"
            if "liblinear" not in skip:
                batch.append(run_liblinear(X, train[3], Xt, test[3]))
            if "sgd" not in skip:
                batch.append(run_sgd(X, train[3], Xt, test[3], args.passes, target))
            for r in batch:
                r.update(round=rnd, target=target, load=os.getloadavg()[0])
                print(f"round {rnd + 1}: {r['system']:18s} {r['wall']:7.2f} s  AUC "
                      f"{r['auc']:.4f}" + (f"  to target {r['to_target']:.2f} s"
                                           if r["to_target"] is not None else ""), flush=True)
            if args.json:
                append_jsonl(args.json, batch)
            results += batch
            loads.append(os.getloadavg()[0])
    if target is not None and any(r["system"].startswith("mpips") for r in results):
        for r in results:  # mpips ran with the target; others reach it at their end or not
            if r["system"] in ("vw", "sklearn liblinear") and r["auc"] >= target:
                r["to_target"] = r["wall"]
    print(f"\n{args.rounds} rounds, interleaved; load average {min(loads):.1f}-{max(loads):.1f}")
    print(table(results, target))
    for system in dict.fromkeys(r["system"] for r in results):
        timed = [r for r in results if r["system"] == system and r.get("phases")]
        if timed:
            print(phase_line(timed, system))
    return 0


def phase_line(runs: list[dict[str, Any]], system: str = "mpips") -> str:
    """mpips: the median seconds of each worker phase over the rounds (the
    job's own table, mpips.apps.linear.app.time_table), and start-up."""
    med = {k: statistics.median(r["phases"].get(k, 0.0) for r in runs) for k in runs[0]["phases"]}
    total = statistics.median(r["worker_seconds"] for r in runs)
    parts = ", ".join(f"{k} {v:.2f} ({100 * v / max(total, 1e-9):.0f}%)" for k, v in med.items())
    first = [r["first_push"] for r in runs if r.get("first_push") is not None]
    return (f"{system}, seconds per worker (median of {len(runs)} rounds, {total:.2f} s): {parts}"
            + (f"; first push {statistics.median(first):.2f} s after launch" if first else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m mpips.bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
