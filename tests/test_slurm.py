"""The sbatch scripts on a real one-node Slurm cluster (tests/slurm_cluster.sh).

The session fixture starts slurmctld, slurmd and munged (installing Debian's
slurm-wlm and munge when missing) unless a cluster from the harness already
runs, and stops what it started at the end. Tests skip only where Slurm cannot
be installed (not root, no apt-get).

Jobs are watched by polling ``scontrol show job`` (``sbatch --wait`` polls
slowly, and ``sacct`` needs accounting, which the test cluster does not have).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mpitools import ROOT

pytestmark = pytest.mark.slurm

HARNESS = ROOT / "tests" / "slurm_cluster.sh"
TRAIN = ROOT / "slurm" / "train.sbatch"
DEMO_JOB = ROOT / "jobs" / "demo.toml"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
         cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timeout after {timeout}s: {' '.join(map(str, cmd))}")


class Cluster:
    """Commands against the test cluster: everything goes through SLURM_CONF."""

    def __init__(self, conf: str):
        self.conf = conf
        self.env = dict(os.environ)
        self.env["SLURM_CONF"] = conf
        # The scripts must set the Open MPI variables they need themselves.
        for k in list(self.env):
            if k.startswith("OMPI_") or k.startswith("SLURM_") and k != "SLURM_CONF":
                del self.env[k]

    def run(self, *cmd: str | Path, timeout: float = 30, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        proc = _run(list(cmd), timeout, env=env or self.env, cwd=ROOT)
        if check and proc.returncode != 0:
            pytest.fail(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{proc.stdout}"
                        f"\n{proc.stderr}")
        return proc

    def sbatch(self, script: Path | str, *args: str, opts: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> str:
        """Submit and return the job id. Options before the script, arguments after."""
        proc = self.run("sbatch", "--parsable", *opts, script, *args, env=env)
        return proc.stdout.strip().split(";")[0]

    def job(self, jobid: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, StdOut...)."""
        out = self.run("scontrol", "show", "job", "-o", jobid).stdout
        # key=value pairs; values (Command=script args) may hold spaces.
        pairs = re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s[A-Za-z][\w:/]*=|\s*$)",
                           out.strip())
        return dict(pairs)

    def wait(self, jobid: str, states: set[str], timeout: float = 60,
             restarts: int | None = None) -> dict[str, str]:
        """Poll until the job is in one of ``states`` (and restarted that often)."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(jobid)
            state = info.get("JobState", "")
            if state in states and (restarts is None or int(info.get("Restarts", 0)) >= restarts):
                return info
            if state in FINAL_STATES - states:
                break
            time.sleep(0.3)
        out = Path(info.get("StdOut", "/nonexistent"))
        text = out.read_text(errors="replace")[-3000:] if out.is_file() else "(no output file)"
        pytest.fail(f"job {jobid}: wanted {sorted(states)} (restarts {restarts}), got "
                    f"{info.get('JobState')} reason {info.get('Reason')} restarts "
                    f"{info.get('Restarts')}\n--- {out} ---\n{text}")

    def wait_for_text(self, path: Path, text: str, jobid: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and text in path.read_text(errors="replace"):
                return
            if self.job(jobid).get("JobState") in FINAL_STATES:
                break
            time.sleep(0.3)
        body = path.read_text(errors="replace")[-3000:] if path.is_file() else "(absent)"
        pytest.fail(f"'{text}' not in {path} (job {jobid} {self.job(jobid).get('JobState')})"
                    f"\n{body}")

    def release(self, jobid: str) -> None:
        """Start a requeued job now: requeue holds it back about two minutes."""
        self.wait(jobid, {"PENDING"}, timeout=60, restarts=1)
        # slurmd refuses a launch whose credential is from the same second as
        # the previous run's kill ("Job credential revoked"): let one pass.
        time.sleep(2)
        self.run("scontrol", "update", f"JobId={jobid}", "StartTime=now")


@pytest.fixture(scope="session")
def slurm() -> Cluster:
    status = _run(["bash", HARNESS, "status"], timeout=30)
    started = False
    if status.returncode != 0:
        proc = _run(["bash", HARNESS, "start"], timeout=600)
        if proc.returncode == 3:
            pytest.skip(f"Slurm cannot be installed here: {proc.stderr.strip()[-500:]}")
        if proc.returncode != 0:
            pytest.fail(f"tests/slurm_cluster.sh start failed (exit {proc.returncode}):\n"
                        f"{proc.stderr[-5000:]}")
        started = True
    conf = _run(["bash", HARNESS, "env"], timeout=10).stdout.strip().split("=", 1)[1]
    yield Cluster(conf)
    if started:
        # Only a cluster this session started: another user's stays up.
        _run(["bash", HARNESS, "stop"], timeout=120)


def _has_train() -> bool:
    proc = _run([sys.executable, "-m", "mpips", "train", "--help"], timeout=60, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.returncode == 0


def _has_resume() -> bool:
    proc = _run([sys.executable, "-m", "mpips", "train", "--help"], timeout=60, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.returncode == 0 and "--resume" in proc.stdout


needs_train = pytest.mark.skipif(not _has_train() or not DEMO_JOB.is_file(),
                                 reason="mpips train not available (or jobs/demo.toml absent)")


# A batch script of one's own: any program on the allocation's tasks, started
# the way `mpips run` starts its ranks (mpips.launch: this MPI's flags, srun).
HELLO = """#!/usr/bin/env python
import os, sys
sys.path.insert(0, {root!r})
from mpips import launch
hello = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'hello rank {{c.rank}} of {{c.size}}')"
run = launch.build(launch.default_ranks(dict(os.environ)), [sys.executable, "-c", hello],
                   launcher={launcher!r})
print("mpips run: " + " ".join(run.cmd), *run.notes, sep="\\n  ", flush=True)
sys.exit(launch.supervise(run))
"""


@pytest.mark.parametrize("launcher", ["mpiexec", "srun"])
def test_mpi_hello(slurm: Cluster, tmp_path: Path, launcher: str) -> None:
    """The cluster runs an MPI job with 4 ranks on 2 real cores, through our launcher."""
    if launcher == "srun":
        mpis = slurm.run("srun", "--mpi=list", check=False)
        if "pmix" not in mpis.stdout + mpis.stderr:
            pytest.skip("this Slurm has no PMIx plugin (srun --mpi=list)")
    script = tmp_path / "hello.sbatch"
    script.write_text(HELLO.format(root=str(ROOT), launcher=launcher))
    out = tmp_path / "hello.out"
    jobid = slurm.sbatch(script, opts=("-n", "4", "-t", "2", "-o", str(out)))
    info = slurm.wait(jobid, {"COMPLETED"}, timeout=60)
    assert info["ExitCode"] == "0:0"
    text = out.read_text()
    for r in range(4):
        assert f"hello rank {r} of 4" in text, text


def test_bad_job_file_fails(slurm: Cluster, tmp_path: Path) -> None:
    """A job file that is not there: FAILED, and the output file says why."""
    out = tmp_path / "bad.out"
    jobid = slurm.sbatch(TRAIN, "jobs/no-such-job.toml",
                         opts=("-n", "3", "-t", "2", "-o", str(out)))
    info = slurm.wait(jobid, {"FAILED"}, timeout=60)
    assert info["ExitCode"] != "0:0"
    text = out.read_text()
    assert "job file 'jobs/no-such-job.toml' not found" in text, text


@needs_train
def test_invalid_job_file_fails(slurm: Cluster, tmp_path: Path) -> None:
    """A job file mpips rejects: FAILED, with the key named in the output file."""
    job = tmp_path / "invalid.toml"
    job.write_text("[job]\nname = 'bad'\nno_such_key = 1\n")
    out = tmp_path / "invalid.out"
    jobid = slurm.sbatch(TRAIN, str(job), opts=("-n", "3", "-t", "2", "-o", str(out)))
    slurm.wait(jobid, {"FAILED"}, timeout=90)
    assert "no_such_key" in out.read_text()


@needs_train
def test_train_sbatch(slurm: Cluster, tmp_path: Path) -> None:
    """sbatch slurm/train.sbatch jobs/demo.toml: COMPLETED, model and metrics written."""
    out = tmp_path / "train.out"
    run = tmp_path / "run"
    jobid = slurm.sbatch(TRAIN, str(DEMO_JOB), "-o", f"job.output={run}",
                         opts=("-n", "4", "-t", "5", "-o", str(out)))
    info = slurm.wait(jobid, {"COMPLETED"}, timeout=120)
    assert info["ExitCode"] == "0:0"
    files = sorted(p.name for p in run.rglob("*") if p.is_file())
    assert any("metric" in f for f in files), (files, out.read_text()[-3000:])
    assert "model.h5" in files, (files, out.read_text()[-3000:])


def _has_command(*cmd: str) -> bool:
    proc = _run([sys.executable, "-m", *cmd, "--help"], timeout=60, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.returncode == 0


@pytest.mark.skipif(not _has_command("data_tools", "convert"),
                    reason="data_tools convert not available")
def test_convert_sbatch(slurm: Cluster, tmp_path: Path) -> None:
    """sbatch slurm/convert.sbatch: a libsvm export becomes a data set."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "part-00000").write_text("1 1:0.5 3:1\n0 2:1 4:0.3\n")
    (export / "part-00001").write_text("1 1:1 5:1\n")
    (export / "_SUCCESS").write_text("")
    out = tmp_path / "convert.out"
    data = tmp_path / "data"
    jobid = slurm.sbatch(ROOT / "slurm" / "convert.sbatch", str(export), "-o", str(data),
                         "--format", "libsvm", opts=("-n", "2", "-t", "2", "-o", str(out)))
    info = slurm.wait(jobid, {"COMPLETED"}, timeout=60)
    assert info["ExitCode"] == "0:0"
    assert (data / "manifest.json").is_file(), out.read_text()
    assert "3 rows" in out.read_text()


@pytest.mark.skipif(not _has_command("mpips", "bench", "kv"), reason="mpips bench kv not available")
def test_bench_sbatch(slurm: Cluster, tmp_path: Path) -> None:
    """sbatch slurm/bench.sbatch kv ...: COMPLETED, JSON lines written."""
    out = tmp_path / "bench.out"
    result = tmp_path / "kv.jsonl"
    jobid = slurm.sbatch(ROOT / "slurm" / "bench.sbatch", "kv", "--keys", "10000",
                         "--repeat", "2", "--json", str(result),
                         opts=("-n", "3", "-t", "2", "-o", str(out)))
    info = slurm.wait(jobid, {"COMPLETED"}, timeout=90)
    assert info["ExitCode"] == "0:0"
    assert result.is_file() and result.read_text().strip(), out.read_text()


@needs_train
def test_job_script_as_batch_script(slurm: Cluster, tmp_path: Path) -> None:
    """jobs/train.sh also works as the batch script itself (spooled copy)."""
    out = tmp_path / "jobsh.out"
    run = tmp_path / "run"
    jobid = slurm.sbatch(ROOT / "jobs" / "train.sh", str(DEMO_JOB), "-o", f"job.output={run}",
                         "-o", "linear.epochs=1",
                         opts=("-n", "3", "-t", "5", "-o", str(out)))
    info = slurm.wait(jobid, {"COMPLETED"}, timeout=120)
    assert info["ExitCode"] == "0:0"
    assert (run / "metrics.jsonl").is_file(), out.read_text()[-3000:]


# A stand-in for `python -m mpips` with the contract the sbatch script relies
# on. `train`: on SIGUSR1 or SIGTERM every rank writes its checkpoint and
# exits; with --resume it reads the checkpoint back. `run`: the real launcher
# (mpips/launch.py of this checkout, loaded by path) without the job check:
# mpiexec with this MPI's flags in a session of its own, the first SIGTERM or
# SIGINT passed on as SIGUSR1 (a second ends the job), the job's exit status.
# It tests the script's signal forwarding and requeue without depending on
# mpips' own checkpoints.
STUB_MAIN = '''
import argparse, importlib.util, os, signal, sys, time

# the real launcher, from the checkout, as a package of another name (this
# stub is the "mpips" the ranks import)
real = os.path.dirname(@LAUNCH_PY@)
spec = importlib.util.spec_from_file_location("mpips_real", os.path.join(real, "__init__.py"),
                                              submodule_search_locations=[real])
pkg = importlib.util.module_from_spec(spec)
sys.modules["mpips_real"] = pkg
spec.loader.exec_module(pkg)
import importlib
launch = importlib.import_module("mpips_real.launch")

p = argparse.ArgumentParser(prog="mpips")
sub = p.add_subparsers(dest="cmd", required=True)
t = sub.add_parser("train")
t.add_argument("job")
t.add_argument("-o", action="append", default=[])
t.add_argument("--resume", action="store_true")
launch.add_arguments(sub.add_parser("run"))
a = p.parse_args()
if a.cmd == "run":
    ranks = a.ranks if a.ranks is not None else launch.default_ranks(dict(os.environ))
    run = launch.build(ranks, [sys.executable, "-m", "mpips", *launch.program_of(a.program)],
                       launcher=a.launcher, ft=not a.no_ft, extra=a.mpi_arg)
    print("mpips run: " + " ".join(run.cmd), flush=True)
    sys.exit(0 if a.dry_run else launch.supervise(run))

from mpi4py import MPI
rank = MPI.COMM_WORLD.rank
ckpt = os.path.join(os.environ["STUB_DIR"], f"ckpt.{rank}")
if a.resume:
    print(f"rank {rank} resumed from step {open(ckpt).read()}", flush=True)
    sys.exit(0)

step = 0
if os.environ.get("STUB_LOST"):
    # what mpips train does when a host is lost: exit 75, requeue to resume
    with open(ckpt, "w") as f:
        f.write("0")
    print(f"rank {rank} training; lost a host: exit 75", flush=True)
    sys.exit(75)

def on_signal(sig, frame):
    with open(ckpt + ".tmp", "w") as f:
        f.write(str(step))
    os.replace(ckpt + ".tmp", ckpt)
    print(f"rank {rank} got {signal.Signals(sig).name}: checkpoint at step {step}", flush=True)
    os._exit(0)

signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGTERM, on_signal)
print(f"rank {rank} training", flush=True)
# Never outlive the test by long, whatever goes wrong.
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    step += 1
    time.sleep(0.05)
sys.exit(f"rank {rank}: no signal within 120 s")
'''


def _stub_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(ROOT / "slurm", home / "slurm")
    (home / "mpips").mkdir()
    (home / "mpips" / "__init__.py").write_text("")
    launch_py = repr(str(ROOT / "mpips" / "launch.py"))
    (home / "mpips" / "__main__.py").write_text(STUB_MAIN.replace("@LAUNCH_PY@", launch_py))
    (home / "job.toml").write_text("[job]\nname = 'stub'\n")
    return home


@pytest.mark.parametrize("how", ["TERM", "USR1-batch"])
def test_signal_checkpoint_requeue_resume_structure(slurm: Cluster, tmp_path: Path,
                                                    how: str) -> None:
    """The script forwards the signal to every rank, requeues, and resumes.

    TERM: ``scancel --signal=TERM`` (preemption, maintenance), sent to all of the
    job's processes. USR1-batch: what ``--signal=B:USR1@60`` sends before the
    time limit, to the batch shell only: the script must pass it on.
    """
    home = _stub_home(tmp_path)
    out = tmp_path / "stub.out"
    env = {**slurm.env, "STUB_DIR": str(tmp_path)}
    # -D: `python -m` looks in the working directory first; keep the real
    # checkout's mpips out of the way.
    jobid = slurm.sbatch(home / "slurm" / "train.sbatch", str(home / "job.toml"),
                         opts=("-n", "3", "-t", "5", "-o", str(out), "-D", str(home)),
                         env=env)
    slurm.wait_for_text(out, "rank 2 training", jobid)
    slurm.wait_for_text(out, "rank 0 training", jobid)
    if how == "TERM":
        slurm.run("scancel", "--full", "--signal=TERM", jobid)
    else:
        slurm.run("scancel", "--batch", "--signal=USR1", jobid)
    slurm.release(jobid)
    info = slurm.wait(jobid, {"COMPLETED"}, timeout=60, restarts=1)
    assert info["Restarts"] == "1"
    text = out.read_text()
    sig = how.split("-")[0]
    assert f"got SIG{sig}" in text, text
    assert "requeueing job" in text, text
    for r in range(3):
        assert (tmp_path / f"ckpt.{r}").is_file(), text
        assert f"rank {r} resumed from step" in text, text


def test_a_job_that_lost_a_host_is_requeued_and_resumes(slurm: Cluster, tmp_path: Path) -> None:
    """mpips train exits 75 when ranks or a host were lost (no signal came to
    the script): train.sbatch requeues the job and the next run resumes."""
    home = _stub_home(tmp_path)
    out = tmp_path / "stub.out"
    env = {**slurm.env, "STUB_DIR": str(tmp_path), "STUB_LOST": "1"}
    jobid = slurm.sbatch(home / "slurm" / "train.sbatch", str(home / "job.toml"),
                         opts=("-n", "2", "-t", "5", "-o", str(out), "-D", str(home)),
                         env=env)
    slurm.wait_for_text(out, "requeueing job", jobid)
    slurm.release(jobid)
    info = slurm.wait(jobid, {"COMPLETED"}, timeout=60, restarts=1)
    text = out.read_text()
    assert info["Restarts"] == "1", text
    assert "lost ranks or a host (exit 75): requeueing to resume" in text, text
    assert "rank 0 resumed from step 0" in text, text


@pytest.mark.skipif(not _has_resume() or not DEMO_JOB.is_file(),
                    reason="mpips train has no --resume yet (checkpoint issue)")
def test_sigterm_checkpoint_and_resume(slurm: Cluster, tmp_path: Path) -> None:
    """Real mpips: SIGTERM mid-run writes a checkpoint; the requeued run resumes.

    The contract train.sbatch relies on: mpips train, sent SIGUSR1 (what the
    script passes on) or SIGTERM, writes a checkpoint under job.output and
    stops; ``train --resume`` continues from it.
    """
    out = tmp_path / "ft.out"
    run = tmp_path / "run"
    # Checkpoints are taken at task boundaries: train on partitions (a small
    # synthetic CTR set) for many epochs, so the job still runs when the
    # signal comes.
    data = tmp_path / "ctr"
    proc = _run([sys.executable, "-m", "data_tools", "synth", "ctr", "--rows", "20000",
                 "--fields", "8", "--vocab", "2000", "--rows-per-partition", "2000",
                 "-o", str(data)], timeout=120, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    jobid = slurm.sbatch(TRAIN, str(DEMO_JOB), "-o", f"job.output={run}",
                         "-o", "job.progress_interval=0.2", "-o", "linear.data=partitions",
                         "-o", f"data.train={data}", "-o", "data.epochs=200",
                         opts=("-n", "4", "-t", "5", "-o", str(out)))
    slurm.wait_for_text(out, "examples", jobid, timeout=60)
    slurm.run("scancel", "--full", "--signal=TERM", jobid)
    slurm.release(jobid)
    slurm.wait_for_text(out, "resumed from checkpoint", jobid, timeout=90)
    text = out.read_text()
    assert "writing a checkpoint, then stopping" in text, text[-3000:]
    assert any("checkpoint" in p.name or "ckpt" in p.name for p in run.rglob("*"))
    # The resumed run need not finish all 100 epochs here.
    slurm.run("scancel", jobid)
