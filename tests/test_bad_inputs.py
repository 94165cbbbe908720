"""A corpus of bad and odd inputs for ``data_tools convert``, each run as a
user runs it (a separate process, under a time limit and a 4 GiB address
space limit): a clear error naming the file (and line) with exit 1 and
nothing partial left, or a documented result. (Corrupt or edited HDF5
partitions and manifests: tests/test_data_errors.py; hostile sketch query
files: tests/test_sketch.py.)"""

from __future__ import annotations

import bz2
import gzip
import json
import resource
import subprocess
import sys

import pytest

from tests.mpitools import ROOT, mpi_env

GOOD = b"1 1:0.5\n-1 2:1\n"
# varied rows: compressed, they take many blocks, so a cut loses some
VARIED = b"".join(b"%d %d:%d\n" % (1 if i % 2 else -1, i % 1000, i % 7 + 1)
                  for i in range(50000))
RANDOM = bytes((i * 7919 + 13) % 251 + 1 for i in range(3000))  # binary, no NUL, no newline


def long_line(nbytes: int) -> bytes:
    ids, out, size = 0, [b"1"], 1
    while size < nbytes:
        token = b" %d:1" % ids
        out.append(token)
        size += len(token)
        ids += 1
    return b"".join(out) + b"\n"


# name: (file name, content, extra args, exit code, what stderr or the result says)
CASES = {
    "truncated gzip": ("in.gz", gzip.compress(VARIED)[:50000], [], 1,
                       "in.gz: cannot decompress"),
    "bz2 that is not bz2": ("in.bz2", b"this is not bz2\n", [], 1,
                            "in.bz2: named as bzip2 data but is not bzip2"),
    "truncated bz2": ("in.bz2", bz2.compress(VARIED)[:12000], [], 1,
                      "in.bz2: cannot decompress"),
    "binary": ("in.txt", RANDOM, [], 1, "in.txt:1: label in"),
    "NUL byte": ("in.txt", GOOD + b"1 3:1\x00\n", [], 1,
                 "in.txt:3: a NUL byte: binary data"),
    "empty": ("in.txt", b"", [], 1, "no rows in the input"),
    "only blank lines": ("in.txt", b"\n\n  \n", [], 1, "no rows in the input"),
    "NaN value": ("in.txt", GOOD + b"1 3:nan\n", [], 1, "in.txt:3: value in '3:nan' is not"),
    "inf value": ("in.txt", GOOD + b"1 3:-inf\n", [], 1, "in.txt:3: value in '3:-inf' is not"),
    "1e39 value": ("in.txt", GOOD + b"1 3:1e39\n", [], 1,
                   "in.txt:3: value 1e+39 is outside float32's range"),
    "negative id": ("in.txt", GOOD + b"1 -4:1\n", [], 1, "in.txt:3: feature id in '-4:1'"),
    "huge id": ("in.txt", GOOD + b"1 9007199254740993:1\n", [], 1,
                "in.txt:3: feature id in '9007199254740993:1' is 2^53 or more"),
    "id 2^64": ("in.txt", GOOD + b"1 18446744073709551616:1\n", [], 1,
                "in.txt:3: feature id in '18446744073709551616:1' is 2^53 or more"),
    "very long line": ("in.txt", GOOD + long_line(20 << 20), [], 1,
                       "in.txt:3: line longer than 16777216 bytes (--max-line-bytes)"),
    # documented results: accepted
    "CRLF line ends": ("in.txt", b"1 1:0.5\r\n-1 2:1\r\n", [], 0, {"rows": 2, "nnz": 2}),
    "UTF-8 byte order mark": ("in.txt", b"\xef\xbb\xbf" + GOOD, [], 0, {"rows": 2, "nnz": 2}),
    "feature id 0": ("in.txt", b"1 0:1\n-1 0:2\n", [], 0, {"rows": 2, "nnz": 2}),
    "no final newline": ("in.txt", b"1 1:0.5\n-1 2:1", [], 0, {"rows": 2, "nnz": 2}),
    "a row with no features": ("in.txt", b"1\n-1 2:1\n", [], 0, {"rows": 2, "nnz": 1}),
    "CSV with a BOM and CRLF": ("in.csv", b"\xef\xbb\xbfy,a\r\n1,0.5\r\n0,2\r\n",
                                ["--format", "csv", "--label", "y", "--numeric", "a"], 0,
                                {"rows": 2, "nnz": 2}),
    "CSV value 1e39": ("in.csv", b"y,a\n1,0.5\n0,1e39\n",
                       ["--format", "csv", "--label", "y", "--numeric", "a"], 1,
                       "in.csv:3: column a = '1e39' is outside float32's range"),
}

MEMORY_LIMIT = 4 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_corpus(tmp_path, case):
    name, content, extra, code, expect = CASES[case]
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "data_tools", "convert", str(source),
                           "-o", str(out), *extra], capture_output=True, text=True,
                          timeout=60, env=mpi_env(), cwd=ROOT, preexec_fn=_limit_memory)
    assert proc.returncode == code, proc.stderr[-2000:]
    if code:
        assert expect in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.count("\n") <= 3, proc.stderr  # one message, no traceback
        left = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert left == [], f"left behind: {left}"
    else:
        manifest = json.loads((out / "manifest.json").read_text())
        assert {k: manifest[k] for k in expect} == expect
