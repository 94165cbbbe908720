"""Data sets where they live: a Spark-style export on S3 converted to
partitions on S3, and a job that trains from them, against an S3 server
started on loopback (moto), compared with the same files on local disk."""

from __future__ import annotations

import bz2
import gzip
import json
import os

import numpy as np
import pytest

from mpips.data import storage
from tests.mpitools import ROOT, run_mpi, run_py

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    """An S3 server on 127.0.0.1 (moto) and a bucket; the endpoint and keys
    reach every subprocess through the variables fsspec and boto read."""
    pytest.importorskip("s3fs", reason="pip install s3fs (mpips[s3])")
    server_mod = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    try:
        server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
    except Exception as e:  # noqa: BLE001 - any reason it cannot serve is a skip
        pytest.skip(f"cannot start an S3 server on loopback: {e}")
    host, port = server.get_host_and_port()
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import fsspec
    import s3fs
    mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"]})
    fs = s3fs.S3FileSystem(endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], key="test",
                           secret="test")
    fs.mkdir("bucket")
    yield fs
    mp.undo()
    server.stop()


def libsvm_rows(rng: np.random.Generator, rows: int) -> bytes:
    """Rows of a planted linear model over features 1..300, as libsvm text."""
    w = np.random.default_rng(0).normal(0, 1.5, 301)
    lines = []
    for _ in range(rows):
        ids = np.sort(rng.choice(np.arange(1, 301), 12, replace=False))
        y = int(rng.random() < 1 / (1 + np.exp(-w[ids].sum())))
        lines.append(f"{y} " + " ".join(f"{i}:1" for i in ids))
    return ("\n".join(lines) + "\n").encode()


def write_export(folder, rng, rows: int) -> None:
    """A Spark-style export: gzip, plain and bzip2 parts, a nested partition
    folder, a _SUCCESS marker and a .crc side file."""
    (folder / "dt=2026-11-01").mkdir(parents=True)
    (folder / "part-00000.gz").write_bytes(gzip.compress(libsvm_rows(rng, rows)))
    (folder / "part-00001").write_bytes(libsvm_rows(rng, rows))
    (folder / "dt=2026-11-01" / "part-00002.bz2").write_bytes(
        bz2.compress(libsvm_rows(rng, rows)))
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-00001.crc").write_bytes(b"\0" * 8)


def test_convert_and_train_from_s3_match_the_local_files(s3, tmp_path):
    rng = np.random.default_rng(3)
    write_export(tmp_path / "export", rng, 3000)
    write_export(tmp_path / "export-test", rng, 1000)
    s3.put(str(tmp_path / "export") + "/", "bucket/export/", recursive=True)
    s3.put(str(tmp_path / "export-test") + "/", "bucket/export-test/", recursive=True)
    for src, dst in (("export", "parts"), ("export-test", "parts-test")):
        for out in (f"s3://bucket/{dst}/", str(tmp_path / dst)):
            source = f"s3://bucket/{src}/" if out.startswith("s3") else str(tmp_path / src)
            proc = run_py("-m", "data_tools", "convert", source, "-o", out,
                          "--rows-per-partition", "2000", timeout=120)
            assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(s3.cat("bucket/parts/manifest.json"))
    mine = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert remote["rows"] == mine["rows"] == 9000 and remote["nnz"] == mine["nnz"]
    # the same rows in the same partitions: the same checksums of their arrays
    assert [p["sha256"] for p in remote["partitions"]] == \
        [p["sha256"] for p in mine["partitions"]]
    assert [u.rsplit("/", 1)[-1] for u in remote["inputs"]] == \
        ["part-00002.bz2", "part-00000.gz", "part-00001"]  # nested folder first, by name
    assert sorted(n.rsplit("/", 1)[-1] for n in s3.ls("bucket/parts")) == \
        sorted([MANIFEST_NAME, *(p["name"] for p in remote["partitions"])])

    aucs = []
    for where in ("s3://bucket/", f"{tmp_path}/"):
        out = tmp_path / ("run-s3" if where.startswith("s3") else "run-local")
        proc = run_mpi(3, "python", "-m", "mpips", "train", str(ROOT / "jobs" / "demo.toml"),
                       "-o", f"job.output={out}", "-o", "linear.data=partitions",
                       "-o", f"data.train={where}parts", "-o", f"data.test={where}parts-test",
                       "-o", "data.shuffle=false", "-o", "data.epochs=2", timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        final = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
        aucs.append((final["auc"], final["logloss"], final["examples"]))
    assert aucs[0] == aucs[1], aucs  # one worker, same rows in the same order
    assert aucs[0][0] > 0.75


MANIFEST_NAME = "manifest.json"


def test_an_existing_data_set_on_s3_is_kept_unless_overwrite(s3, tmp_path):
    rng = np.random.default_rng(4)
    write_export(tmp_path / "export", rng, 500)
    s3.put(str(tmp_path / "export") + "/", "bucket/keep-src/", recursive=True)
    args = ("-m", "data_tools", "convert", "s3://bucket/keep-src/", "-o", "s3://bucket/keep/",
            "--rows-per-partition", "400")
    assert run_py(*args, timeout=120).returncode == 0
    before = s3.cat("bucket/keep/manifest.json")
    again = run_py(*args, timeout=120)
    assert again.returncode != 0 and "already holds a data set" in again.stderr, again.stderr
    assert s3.cat("bucket/keep/manifest.json") == before
    bigger = run_py(*args[:-1], "1000", "--overwrite", timeout=120)
    assert bigger.returncode == 0, bigger.stderr
    names = sorted(n.rsplit("/", 1)[-1] for n in s3.ls("bucket/keep"))
    manifest = json.loads(s3.cat("bucket/keep/manifest.json"))
    assert names == sorted([MANIFEST_NAME, *(p["name"] for p in manifest["partitions"])])
    assert len(manifest["partitions"]) < 4  # fewer, larger partitions; no old leftovers


def test_a_url_without_its_package_says_what_to_install(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_fsspec(name, *args, **kwargs):
        if name == "fsspec" or name.startswith("fsspec."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fsspec)
    with pytest.raises(storage.StorageError, match=r"pip install 'mpips\[s3\]'"):
        storage.filesystem("s3://bucket/x")
    assert not storage.is_url("file:///tmp/x") and storage.local("file:///tmp/x") == "/tmp/x"
    assert storage.join("s3://b/parts", "m.json") == "s3://b/parts/m.json"
    assert storage.join("/data/parts", "m.json") == os.path.join("/data/parts", "m.json")
