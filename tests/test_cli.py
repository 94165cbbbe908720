"""The command line: help, config errors and bad layouts end cleanly, fast."""

import json

import pytest

from tests.mpitools import ROOT, run_mpi, run_py


def test_help_lists_subcommands():
    proc = run_py("-m", "mpips", "--help", timeout=30)
    assert proc.returncode == 0
    for word in ("train", "bench"):
        assert word in proc.stdout
    proc = run_py("-m", "mpips", "bench", "kv", "--help", timeout=30)
    assert proc.returncode == 0 and "--keys" in proc.stdout


def test_bad_cli_is_an_error():
    proc = run_py("-m", "mpips", "fly", timeout=30)
    assert proc.returncode == 2 and "invalid choice: 'fly'" in proc.stderr


@pytest.mark.integration
def test_bad_job_file_names_key_and_file(tmp_path):
    job = tmp_path / "bad.toml"
    job.write_text("[linear]\nlr = -1.0\n")
    proc = run_mpi(3, "python", "-m", "mpips", "train", str(job), timeout=60)
    assert proc.returncode != 0
    assert f"{job}: [linear] lr = -1.0 must be > 0" in proc.stderr
    assert proc.stderr.count("must be > 0") == 1  # rank 0 says it, once
    job.write_text('[job]\napp = "nope"\n')
    proc = run_mpi(3, "python", "-m", "mpips", "train", str(job), timeout=60)
    assert proc.returncode != 0 and "[job] app = 'nope' is not one of" in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("n,extra,match", [
    (2, [], "needs at least 3 ranks"),
    (3, ["--servers", "2"], "2 servers leave no worker among 3 ranks")])
def test_bad_layout_stops_every_rank(n, extra, match):
    proc = run_mpi(n, "python", "-m", "mpips", "train", str(ROOT / "jobs" / "demo.toml"),
                   *extra, timeout=60)
    assert proc.returncode != 0
    assert (proc.stdout + proc.stderr).count(match) == 1


@pytest.mark.integration
def test_demo_job_trains(tmp_path):
    proc = run_mpi(4, "python", "-m", "mpips", "train", str(ROOT / "jobs" / "demo.toml"),
                   "-o", f"job.output={tmp_path}", "-o", "linear.synthetic_rows=30000",
                   timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().split("\n")
               if line]
    m = metrics[-1]
    # Learned, not guessed: well above chance and within reach of the planted model.
    assert m["auc"] > 0.7 and m["auc"] > m["planted"]["auc"] - 0.08
    assert "train loss" in proc.stdout


@pytest.mark.integration
def test_log_format_json_prints_one_object_per_progress_line(tmp_path):
    proc = run_mpi(4, "python", "-m", "mpips", "train", str(ROOT / "jobs" / "demo.toml"),
                   "-o", f"job.output={tmp_path}", "-o", "linear.synthetic_rows=30000",
                   "-o", "job.progress_interval=0.2", "--log-format", "json", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert records and not [line for line in proc.stdout.splitlines()
                            if line.startswith("[")]  # no text lines beside them
    last = records[-1]
    assert last["epoch"] == last["of"] and last["examples"] == 30000 * 2 * last["of"]
    assert last["examples_per_s"] > 0 and 0.5 < last["test_auc"] <= 1
    assert all(r["elapsed"] > 0 for r in records)


def test_validate_checks_a_job_without_ranks(tmp_path):
    ok = run_py("-m", "mpips", "validate", "jobs/demo.toml", "--np", "4")
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "1 scheduler, 1 server(s), 2 worker(s)" in ok.stdout
    typo = run_py("-m", "mpips", "validate", "jobs/demo.toml", "-o", "linear.lrr=0.1")
    assert typo.returncode == 2
    assert "unknown key [linear] lrr: did you mean 'lr'?" in typo.stderr
    job = tmp_path / "job.toml"
    job.write_text("[lineer]\nlr = 1\n")
    bad = run_py("-m", "mpips", "validate", str(job))
    assert bad.returncode == 2 and f"{job}: unknown section [lineer]: did you mean " \
        "'linear'?" in bad.stderr
    few = run_py("-m", "mpips", "validate", "jobs/demo.toml", "--np", "2")
    assert few.returncode == 2 and "at least 3 ranks" in few.stderr
