"""Filters under mpiexec: adult and news20 trained with every filter on reach
the accuracy of the same job with none (tolerance: 0.005 test accuracy on
adult, 0.002 test AUC on news20), and send 1.6x (adult) / 3x (news20) fewer
bytes of the weight table (measured 2.0-2.2x and 3.3x). Short jobs (2 epochs) to stay fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpips.bench.filters import CHAIN_PULL, CHAIN_PUSH
from tests.mpitools import ROOT, run_mpi, run_py, shared_file

pytestmark = pytest.mark.integration


def data_dir(tmp: Path, name: str, rows: int) -> Path:
    """The converted set under data/ if jobs/linear.sh made it, else convert."""
    local = ROOT / "data" / name.replace(".binary", "").replace(".train", "") \
        .replace(".test", "-test")
    if (local / "manifest.json").exists():
        return local
    out = tmp / name
    proc = run_py("-m", "data_tools", "convert", str(shared_file(f"{name}.libsvm.gz")),
                  "-o", str(out), "--rows-per-partition", str(rows), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


def bench_run(tmp: Path, job: str, train: Path, test: Path, push: list[str],
              pull: list[str], name: str, *extra: str, epochs: int = 2) -> dict:
    out = tmp / name
    overrides = [f"job.output={out}", f"data.train={train}", f"data.test={test}",
                 f"data.epochs={epochs}", "linear.save_model=false", 'filters.tables=["w"]',
                 f"filters.push={json.dumps(push)}", f"filters.pull={json.dumps(pull)}",
                 *extra]
    proc = run_mpi(4, "python", "-m", "mpips.bench.filters", "run", job,
                   *[a for o in overrides for a in ("-o", o)], timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "filters.json").read_text())


# measured (loaded machine): adult, 2 epochs, 2.2x fewer bytes (123 features:
# values dominate); news20, 2 epochs, 3.3x, but its AUC gap to no filters
# varied up to 0.0026 between runs (asynchronous, half-trained): 4 epochs
# settle it (5 epochs: 5.7x and -0.0007, see jobs/bench_filters.sh)
@pytest.mark.parametrize("job,train,test,rows,key,tolerance,l1,saving,epochs", [
    ("adult", "adult.train", "adult.test", 4096, "accuracy", 0.005, "1e-5", 1.6, 2),
    ("news20", "news20.binary.train", "news20.binary.test", 1500, "auc", 0.002, "1e-4", 3.0,
     4)])
def test_all_filters_keep_the_accuracy_of_none(tmp_path, job, train, test, rows, key,
                                               tolerance, l1, saving, epochs):
    tr, te = data_dir(tmp_path, train, rows), data_dir(tmp_path, test, rows)
    jobfile = str(ROOT / "jobs" / f"{job}.toml")
    common = [f"linear.l1={l1}", f"filters.kkt_l1={l1}", "filters.pull_bits=8",
              "filters.significant_threshold=1e-4"]
    none = bench_run(tmp_path, jobfile, tr, te, [], [], "none", *common, epochs=epochs)
    full = bench_run(tmp_path, jobfile, tr, te, CHAIN_PUSH, CHAIN_PULL, "all", *common,
                     epochs=epochs)
    total_none = none["w2s_bytes"] + none["s2w_bytes"]
    total_all = full["w2s_bytes"] + full["s2w_bytes"]
    print(f"{job}: {key} {none[key]:.4f} -> {full[key]:.4f}; bytes {total_none:,} -> "
          f"{total_all:,} ({total_none / total_all:.2f}x)")
    assert abs(full[key] - none[key]) <= tolerance
    assert total_all * saving < total_none
    assert full["filters"]["push:key_cache"]["bytes_after"] < \
        full["filters"]["push:key_cache"]["bytes_before"] / 10
