"""``data_tools bench FILE``: conversion and reader throughput, measured in one run.

Times, on the same uncompressed libsvm text: scikit-learn's
``load_svmlight_file`` (Cython) and ``convert`` on one process (parse, hash,
write HDF5, checksum). Then the reader: minibatches per second from the
converted partition, raw and localised (sorted unique keys + local CSR).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from data_tools.convert import OutputSpec, convert
from data_tools.formats import ConvertOptions
from data_tools.sources import open_binary
from mpips.data.manifest import load_manifest
from mpips.data.reader import read_minibatches
from mpips.transport.collective import Comm

MIN_SECONDS = 2.0  # repeat reader passes until this much time is measured


def _reader_rate(paths: list[str], batch: int, localise: bool) -> tuple[float, float]:
    rows = nnz = 0
    started = time.perf_counter()
    while True:
        for mb in read_minibatches(paths, batch):
            rows += mb.rows
            nnz += mb.nnz
            if localise:
                mb.localised()
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_SECONDS:
            return rows / elapsed, nnz / elapsed


def bench(path: str, minibatch: int = 1000, workdir: str | None = None) -> int:
    scratch = Path(workdir or tempfile.mkdtemp(prefix="bench_data_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        plain = scratch / "input.libsvm"
        with open_binary(path) as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        megabytes = os.path.getsize(plain) / 1e6
        print(f"input: {path} ({megabytes:.1f} MB uncompressed), one process each")

        try:
            from sklearn.datasets import load_svmlight_file
        except ImportError:
            load_svmlight_file = None
        if load_svmlight_file is not None:
            started = time.perf_counter()
            matrix, _ = load_svmlight_file(str(plain))
            seconds = time.perf_counter() - started
            print(f"  sklearn load_svmlight_file : {seconds:6.2f} s  {megabytes / seconds:6.1f} "
                  f"MB/s  {matrix.shape[0] / seconds:10,.0f} rows/s")
        for label, source in (("plain", plain), ("gzip", Path(path))):
            if label == "gzip" and not path.endswith(".gz"):
                continue
            out = scratch / f"converted_{label}"
            started = time.perf_counter()
            manifest = convert([str(source)], "libsvm", ConvertOptions(),
                               OutputSpec(str(out), overwrite=True), Comm())
            seconds = time.perf_counter() - started
            print(f"  data_tools convert ({label:5s}): {seconds:6.2f} s  "
                  f"{megabytes / seconds:6.1f} MB/s  {manifest['rows'] / seconds:10,.0f} rows/s"
                  "  (parse + hash + HDF5 + checksum)")
        paths = load_manifest(scratch / "converted_plain").paths
        for localise in (False, True):
            rows, nnz = _reader_rate(paths, minibatch, localise)
            what = "minibatches + localise" if localise else "minibatches"
            print(f"  reader, {what:22s}: {rows:12,.0f} rows/s  {nnz:14,.0f} nnz/s  "
                  f"(batch {minibatch})")
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0
