"""Export folders as Hadoop/Spark leave them, partition cutting, and MPI conversion."""

from __future__ import annotations

import bz2
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from data_tools.sources import find_inputs
from mpips.data.manifest import load_manifest
from tests.fixtures.data_helpers import convert_to, read_all
from tests.mpitools import run_mpi


def _rows(first: int, count: int) -> bytes:
    return b"".join(b"%d %d:1 %d:0.%d\n" % (i % 2 * 2 - 1, i % 50, 100 + i % 7, i % 10)
                    for i in range(first, first + count))


def make_export(root: Path) -> Path:
    """dt=.../part-* files in gz, bz2 and plain, with markers and side files."""
    export = root / "export"
    layout = {
        "dt=2026-11-02/part-00000.gz": gzip.compress(_rows(250, 170)),
        "dt=2026-11-01/part-00001": _rows(100, 150),
        "dt=2026-11-01/part-00000.bz2": bz2.compress(_rows(0, 100)),
        "dt=2026-11-02/part-00001": b"",  # an empty Spark partition
        "dt=2026-11-02/part-00002": _rows(420, 80),
        "dt=2026-11-01/_SUCCESS": b"",
        "dt=2026-11-01/.part-00001.crc": b"garbage",
        "dt=2026-11-02/part-00000.gz.crc": b"garbage",
        "_SUCCESS": b"",
        "_temporary/0/part-00000": b"not data",
        ".hidden": b"not data",
    }
    for name, data in layout.items():
        path = export / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return export


def test_walk_order_and_ignored_files(tmp_path):
    export = make_export(tmp_path)
    names = [str(Path(p).relative_to(export)) for p in find_inputs([str(export)])]
    assert names == ["dt=2026-11-01/part-00000.bz2", "dt=2026-11-01/part-00001",
                     "dt=2026-11-02/part-00000.gz", "dt=2026-11-02/part-00001",
                     "dt=2026-11-02/part-00002"]


def test_export_converts_in_order(tmp_path):
    out = convert_to(tmp_path, [make_export(tmp_path)], keep_ids=True,
                     spec_kw={"target_rows": 64})
    labels, indptr, keys, _ = read_all(out)
    expected = _rows(0, 500)
    assert labels.size == 500
    first_ids = keys[indptr[:-1]]
    np.testing.assert_array_equal(first_ids, np.arange(500) % 50)
    assert expected.count(b"\n") == 500
    manifest = load_manifest(out)
    assert all(p.rows <= 64 for p in manifest.partitions)
    assert [p.first_row for p in manifest.partitions] == list(
        np.cumsum([0] + [p.rows for p in manifest.partitions[:-1]]))
    assert manifest.raw["partitions"][0]["name"] == "part-00000-0000.h5"


def test_partitions_cut_by_bytes(tmp_path):
    out = convert_to(tmp_path, [make_export(tmp_path)], spec_kw={"target_bytes": 2000})
    manifest = load_manifest(out)
    assert len(manifest.partitions) > 5
    assert manifest.rows == 500
    # 12 bytes per row + 12 per nonzero: one partition stays near the target
    for part in manifest.partitions:
        assert part.rows * 12 + part.nnz * 12 <= 2000 or part.rows == 1


def test_one_and_three_ranks_give_the_same_data(tmp_path):
    export = make_export(tmp_path)
    manifests = {}
    for ranks in (1, 3):
        out = tmp_path / f"out{ranks}"
        proc = run_mpi(ranks, sys.executable, "-m", "data_tools", "convert", str(export),
                       "-o", str(out), "--rows-per-partition", "64", timeout=90)
        assert proc.returncode == 0, proc.stderr
        assert f"on {ranks} rank(s)" in proc.stdout
        manifests[ranks] = json.loads((out / "manifest.json").read_text())
    assert manifests[1] == manifests[3]
    assert len(manifests[1]["partitions"]) >= 8
    for a, b in zip(read_all(tmp_path / "out1"), read_all(tmp_path / "out3"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_failure_on_one_rank_leaves_nothing(tmp_path):
    export = make_export(tmp_path)
    (export / "dt=2026-11-02" / "part-00003").write_bytes(b"1 1:1\n1 x:2\n")
    out = tmp_path / "out"
    proc = run_mpi(3, sys.executable, "-m", "data_tools", "convert", str(export), "-o", str(out),
                   timeout=90)
    assert proc.returncode != 0
    assert "part-00003:2:" in proc.stderr
    assert not list(out.iterdir())
