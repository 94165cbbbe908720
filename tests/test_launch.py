"""``mpips run``: the launch each MPI needs, the job checked before ranks
start, and Ctrl-C as checkpoint-and-stop."""

import json
import signal
import subprocess
import sys

import pytest

from mpips import launch
from mpips.launch import LaunchError, MPIInfo, build, default_ranks, parse_version, program_of
from tests.mpitools import ROOT, mpi_env, run_py, wait_for_output

OPENMPI5 = MPIInfo("openmpi", "5.0.11", "/usr/bin/mpiexec")
PROGRAM = ["python", "-m", "mpips", "train", "job.toml"]


def test_versions_of_each_mpi_are_recognised():
    assert parse_version("mpiexec (Open MPI) 5.0.11\n\nReport bugs to ...") == \
        MPIInfo("openmpi", "5.0.11", "mpiexec")
    assert parse_version("prterun (Open MPI) 5.0.3").ulfm
    old = parse_version("mpirun (Open MPI) 4.1.5")
    assert old.flavor == "openmpi" and not old.ulfm
    mpich = parse_version("HYDRA build details:\n    Version:               4.2.1\n")
    assert mpich == MPIInfo("mpich", "4.2.1", "mpiexec") and not mpich.ulfm
    assert parse_version("Intel(R) MPI Library for Linux* OS, Version 2021.10").flavor == "intel"
    assert parse_version("something else").flavor == "unknown"


def test_open_mpi_gets_ulfm_oversubscription_and_root_variables_where_needed():
    lo = build(8, PROGRAM, env={}, cores=2, mpi=OPENMPI5, is_root=True)
    assert lo.cmd[:3] == ["/usr/bin/mpiexec", "-n", "8"]
    assert "--oversubscribe" in lo.cmd and "--bind-to" in lo.cmd
    assert lo.cmd[lo.cmd.index("--with-ft") + 1] == "ulfm" and lo.cmd[-5:] == PROGRAM
    assert lo.env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and lo.env["OMPI_MCA_mpi_yield_when_idle"]
    assert lo.env["OMP_NUM_THREADS"] == "1" and lo.env["PYTHONUNBUFFERED"] == "1"
    quiet = build(2, PROGRAM, env={}, cores=4, mpi=OPENMPI5, is_root=False, ft=False)
    assert quiet.cmd == ["/usr/bin/mpiexec", "-n", "2", *PROGRAM]
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in quiet.env
    assert "OMPI_MCA_mpi_yield_when_idle" not in quiet.env
    four = build(2, PROGRAM, env={}, cores=4, mpi=MPIInfo("openmpi", "4.1.5", "mpirun"),
                 is_root=False)
    assert "--with-ft" not in four.cmd and "no ULFM" in " ".join(four.notes)


def test_one_host_leaves_out_open_mpis_network_probe_unless_told(monkeypatch):
    """Open MPI's ofi transport sleeps a second in MPI_Init; on one host
    shared memory carries the traffic, so the launcher leaves it out, but
    never on several hosts or where the user chose the transports."""
    assert build(4, PROGRAM, env={}, cores=2, mpi=OPENMPI5).env["OMPI_MCA_btl"] == "^ofi"
    mine = build(4, PROGRAM, env={"OMPI_MCA_btl": "self,tcp"}, cores=2, mpi=OPENMPI5)
    assert mine.env["OMPI_MCA_btl"] == "self,tcp"
    for extra in (["--host", "a,b"], ["--hostfile=hosts"], ["-H", "a:2,b:2"]):
        assert "OMPI_MCA_btl" not in build(4, PROGRAM, env={}, cores=2, mpi=OPENMPI5,
                                           extra=extra).env
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/" + name)
    many = build(8, PROGRAM, launcher="srun", env={"SLURM_JOB_ID": "7",
                                                   "SLURM_JOB_NUM_NODES": "2"})
    one = build(8, PROGRAM, launcher="srun", env={"SLURM_JOB_ID": "7",
                                                  "SLURM_JOB_NUM_NODES": "1"})
    assert "OMPI_MCA_btl" not in many.env and one.env["OMPI_MCA_btl"] == "^ofi"


def test_mpich_gets_no_open_mpi_flags_and_is_told_recovery_is_restart():
    lo = build(8, PROGRAM, env={}, cores=2, mpi=MPIInfo("mpich", "4.2.1", "mpiexec"),
               is_root=True)
    assert lo.cmd == ["mpiexec", "-n", "8", *PROGRAM]
    assert not any(k.startswith("OMPI_") for k in lo.env)
    assert "checkpoint/restart" in " ".join(lo.notes)


def test_slurm_sets_the_rank_count_and_srun_needs_an_allocation(monkeypatch):
    assert default_ranks({"SLURM_NTASKS": "64", "MPIPS_NP": "3"}) == 64
    assert default_ranks({"MPIPS_NP": "3"}) == 3 and default_ranks({}) == 4
    with pytest.raises(LaunchError, match="not a rank count"):
        default_ranks({"MPIPS_NP": "four"})
    with pytest.raises(LaunchError, match="needs a Slurm allocation"):
        build(4, PROGRAM, launcher="srun", env={})
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/" + name)
    lo = build(16, PROGRAM, launcher="srun", env={"SLURM_JOB_ID": "7",
                                                  "SLURM_JOB_NUM_NODES": "4"}, cores=4)
    assert lo.cmd[:3] == ["srun", "--mpi=pmix", "--ntasks=16"] and lo.cmd[3:] == PROGRAM
    with pytest.raises(LaunchError, match="at least one rank"):
        build(0, PROGRAM, env={}, mpi=OPENMPI5)


def test_a_job_file_alone_means_train():
    assert program_of(["jobs/demo.toml", "-o", "a.b=1"]) == ["train", "jobs/demo.toml",
                                                               "-o", "a.b=1"]
    assert program_of(["bench", "kv", "--keys", "1000"])[0] == "bench"
    with pytest.raises(LaunchError, match="no job file"):
        program_of([])


@pytest.mark.integration
def test_run_starts_the_demo_and_returns_its_status(tmp_path):
    proc = run_py("-m", "mpips", "run", "-n", "3", "jobs/demo.toml", "-o",
                  f"job.output={tmp_path}", "-o", "linear.epochs=1", timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "mpips run: " in out and " -n 3 " in out and "mpips: demo: done in" in out


@pytest.mark.integration
def test_run_converts_an_export_on_several_ranks(tmp_path):
    """``mpips run -n 2 convert ...``: data_tools convert's ranks share the
    files; a bad option ends every rank at once with its usage."""
    export = tmp_path / "export"
    export.mkdir()
    for i in range(3):
        (export / f"part-0000{i}").write_text("".join(f"{(r + i) % 2} {r % 50 + 1}:1 77:0.5\n"
                                                      for r in range(300)))
    (export / "_SUCCESS").write_text("")
    out = tmp_path / "data"
    proc = run_py("-m", "mpips", "run", "-n", "2", "convert", str(export), "-o", str(out),
                  "--rows-per-partition", "200", timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 900 and len(manifest["inputs"]) == 3
    bad = run_py("-m", "mpips", "run", "-n", "2", "convert", str(export), "-o",
                 str(tmp_path / "d2"), "--no-such", timeout=60)
    said = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "unrecognized arguments: --no-such" in said, said


@pytest.mark.integration
def test_a_bad_job_is_refused_before_any_rank_starts(tmp_path):
    proc = run_py("-m", "mpips", "run", "-n", "4", "jobs/demo.toml", "-o", "linear.lrr=1",
                  timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "unknown key [linear] lrr: did you mean 'lr'?" in out
    assert "the job was not started" in out and "mpips: demo:" not in out


@pytest.mark.integration
def test_ctrl_c_stops_the_job_cleanly(tmp_path):
    """The first Ctrl-C reaches the launcher only (mpiexec runs in a session
    of its own) and becomes SIGUSR1 to every rank: checkpoint where there is
    a work queue, then a clean stop, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "mpips", "run", "-n", "4", "jobs/demo.toml",
                             "-o", f"job.output={tmp_path}", "-o", "linear.epochs=200",
                             "-o", "job.progress_interval=0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=mpi_env(), cwd=ROOT)
    try:
        seen = wait_for_output(proc, "train loss", timeout=60)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    out = "".join(seen) + rest
    assert "SIGINT: asking the job to write a checkpoint and stop" in out, out[-3000:]
    assert "stopped on SIGUSR1" in out and proc.returncode == 0, out[-3000:]


@pytest.fixture(scope="session")
def mpich_bin(tmp_path_factory):
    """A venv that sees this Python's packages but has MPICH and an mpi4py of
    its own (pip install mpich mpi4py), kept in ~/.cache between runs."""
    import os
    from pathlib import Path
    venv = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mpips-test-mpich"
    py = venv / "bin" / "python"
    if not (venv / "bin" / "mpiexec").exists():
        made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                               str(venv)], capture_output=True, text=True, timeout=120)
        inst = made.returncode == 0 and subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--ignore-installed", "mpich", "mpi4py"],
            capture_output=True, text=True, timeout=600)
        if not inst or inst.returncode != 0:
            pytest.skip("cannot install MPICH (pip install mpich mpi4py in a venv): "
                        + (inst.stderr[-500:] if inst else made.stderr[-500:]))
    return venv / "bin"


@pytest.mark.integration
def test_the_demo_runs_on_mpich_with_its_flags(mpich_bin, tmp_path):
    env = mpi_env()
    env["PATH"] = f"{mpich_bin}:{env['PATH']}"
    proc = subprocess.run([str(mpich_bin / "python"), "-m", "mpips", "run", "-n", "3",
                           "jobs/demo.toml", "-o", f"job.output={tmp_path}",
                           "-o", "linear.epochs=1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "MPICH" in out and "recovery is checkpoint/restart" in out
    assert "--oversubscribe" not in out and "--with-ft" not in out
    assert "mpips: demo: done in" in out


def test_the_exit_status_comes_from_the_jobs_status_when_the_launcher_says_0(tmp_path,
                                                                             monkeypatch):
    """Open MPI exits 0 when it tears a job down after losing a host: a job
    that never said "done" is lost (75), whatever the launcher says."""
    import time

    from mpips.status import write_status
    monkeypatch.setattr(launch, "FINAL_STATUS_WAIT", 0.2)
    started = time.time()
    assert launch.outcome(0, str(tmp_path), started) == 75  # no status at all
    write_status(tmp_path, "running")
    assert launch.outcome(0, str(tmp_path), started) == 75
    write_status(tmp_path, "stopping", signal="SIGTERM")  # killed before it stopped
    assert launch.outcome(0, str(tmp_path), started) == 75
    write_status(tmp_path, "preempted", signal="SIGUSR1")
    assert launch.outcome(0, str(tmp_path), started) == 0
    write_status(tmp_path, "done")
    assert launch.outcome(0, str(tmp_path), started) == 0
    assert launch.outcome(1, str(tmp_path), started) == 1  # the launcher's failure stands
    write_status(tmp_path, "failed", code=75, message="host h3 lost")
    assert launch.outcome(0, str(tmp_path), started) == 75
    assert launch.outcome(0, str(tmp_path), time.time() + 10) == 75  # an older run's file


@pytest.mark.parametrize("state,code", [("done", 0), ("failed", 3)])
def test_a_launcher_held_by_a_frozen_rank_is_ended_after_the_job_ended(tmp_path, state, code):
    """The job wrote its final status, but the launcher runs on (Open MPI's
    waits for a rank frozen for good, on a hung host): --end-grace seconds
    later mpips run ends it, and the job's own outcome stands. Here the
    "launcher" writes the status and then hangs, as a frozen rank makes it."""
    import time
    out = tmp_path / "run"
    program = (f"import json, os, time; os.makedirs({str(out)!r}, exist_ok=True); "
               f"open({str(out / 'status.json')!r}, 'w').write(json.dumps("
               f"{{'state': {state!r}, 'time': time.time(), 'code': {code}}})); "
               "time.sleep(600)")
    hung = launch.Launch([sys.executable, "-c", program], dict(mpi_env()))
    t = time.monotonic()
    got = launch.supervise(hung, str(out), time.time() - 1, end_grace=1.0)
    assert got == code and time.monotonic() - t < 30


def test_bytecode_is_compiled_once_before_the_ranks_start(tmp_path, monkeypatch):
    """Ranks that find no bytecode compile every module they import, and
    every job again where PYTHONDONTWRITEBYTECODE is set: the launcher
    compiles the package's stale modules once (whatever that setting)."""
    import importlib.util
    import os
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (package / name).write_text("X = 1\n")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert launch.compile_bytecode(package) == 4
    for source in package.rglob("*.py"):
        assert os.path.exists(importlib.util.cache_from_source(str(source)))
    assert launch.compile_bytecode(package) == 0
    later = os.stat(package / "a.py").st_mtime + 10
    os.utime(package / "a.py", (later, later))  # an edited module
    assert launch.compile_bytecode(package) == 1
    earlier = later - 1000
    (package / "sub" / "b.py").write_text("X = 22\n")
    os.utime(package / "sub" / "b.py", (earlier, earlier))  # replaced by an older file
    assert launch.compile_bytecode(package) == 1  # as Python sees it: the header differs
    assert launch.compile_bytecode(package) == 0

    # mpips run compiles before it starts the ranks (and not on --dry-run)
    calls = []
    monkeypatch.setattr(launch, "compile_bytecode", lambda: calls.append("compile") or 0)
    monkeypatch.setattr(launch, "supervise", lambda *a, **k: calls.append("launch") or 0)
    args = launch.argparse.Namespace(program=["bench", "kv"], ranks=3, launcher="auto",
                                     no_ft=False, mpi_arg=[], dry_run=False, end_grace=5.0)
    assert launch.cmd_run(args, lambda program, ranks: (0, None)) == 0
    assert calls == ["compile", "launch"]
    calls.clear()
    args.dry_run = True
    assert launch.cmd_run(args, lambda program, ranks: (0, None)) == 0
    assert calls == []
