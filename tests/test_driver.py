"""mpips.run_job: a job driven from Python (a child process runs mpips run),
job after job in one process, with clear errors."""

import pytest

import mpips
from tests.mpitools import ROOT

pytestmark = pytest.mark.integration

DEMO = str(ROOT / "jobs" / "demo.toml")


def test_two_jobs_from_one_process_report_how_they_ended(tmp_path):
    results = [mpips.run_job(DEMO, 3, overrides=[f"job.output={tmp_path / name}",
                                                 "linear.epochs=1",
                                                 "linear.synthetic_rows=20000"])
               for name in ("a", "b")]
    for r, name in zip(results, ("a", "b"), strict=True):
        assert r.ok and r.code == 0 and r.state == "done", r
        assert r.output == tmp_path / name and (r.output / "model.h5").is_file()
        assert "test: logloss" in r.log.read_text()
    import sys
    assert "mpi4py.MPI" not in sys.modules  # the caller never loads MPI


def test_a_bad_key_is_refused_before_any_rank_starts(tmp_path):
    with pytest.raises(mpips.ConfigError, match="linear.epoch"):
        mpips.run_job(DEMO, 3, overrides=[f"job.output={tmp_path}", "linear.epoch=1"])
    assert not (tmp_path / "job.log").exists()


def test_a_failed_job_raises_with_its_result_or_returns_it(tmp_path):
    bad = [f"job.output={tmp_path}", "linear.data=partitions",
           f"data.train={tmp_path / 'nowhere'}"]
    with pytest.raises(mpips.JobFailed) as caught:
        mpips.run_job(DEMO, 3, overrides=bad)
    result = caught.value.result
    assert result.code != 0 and not result.ok
    assert "nowhere" in str(caught.value)  # the end of the job's log says why
    again = mpips.run_job(DEMO, 3, overrides=bad, check=False)
    assert again.code == result.code and not again.ok
