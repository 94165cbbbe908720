"""The package face: every public name resolves, ``import mpips`` loads no
MPI, and the README's API example runs as written under mpiexec."""

from __future__ import annotations

import re

import numpy as np

from tests.mpitools import ROOT, run_mpi, run_py


def test_every_public_name_resolves_without_loading_mpi():
    proc = run_py("-c", "import sys, mpips\n"
                  "missing = [n for n in mpips.__all__ if getattr(mpips, n, None) is None]\n"
                  "assert not missing, missing\n"
                  "assert 'mpi4py.MPI' not in sys.modules, 'import mpips loaded MPI'\n"
                  "print(len(mpips.__all__), 'names')")
    assert proc.returncode == 0, proc.stderr
    assert "names" in proc.stdout


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md has no block after <!-- api-example -->"
    return found.group(1)


def test_readme_example_needs_one_import_and_runs(tmp_path):
    code = readme_example()
    imports = [line for line in code.splitlines() if re.match(r"(from|import) mpips", line)]
    assert imports == ["import mpips"], imports
    script = tmp_path / "counter.py"
    script.write_text(code)
    proc = run_mpi(3, "python", str(script), "-o", f"job.output={tmp_path}", timeout=120,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = re.findall(r"\[\s*(-?[\d.e+-]+)\]", proc.stdout)
    # one AdaGrad step of lr 0.1 against a gradient of 1: every weight is -0.1
    assert len(rows) == 3 and np.allclose([float(r) for r in rows], -0.1), proc.stdout
