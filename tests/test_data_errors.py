"""Bad input: clear messages naming file and line, non-zero exit, nothing left behind."""

from __future__ import annotations

import gzip
import shutil

import h5py
import numpy as np
import pytest

from data_tools.cli import main
from tests.mpitools import run_py


def run_convert(tmp_path, text: bytes, *extra: str, name: str = "in.txt"):
    source = tmp_path / name
    source.write_bytes(text)
    out = tmp_path / "out"
    code = main(["convert", str(source), "-o", str(out), "--overwrite", *extra])
    return code, out


GOOD = b"1 1:0.5\n-1 2:1\n"
BAD = {
    "bad token": (b"1 1:0.5 nonsense\n", "not a number"),
    "non-numeric value": (b"1 1:abc\n", "value in '1:abc' is not a number"),
    "non-numeric id": (b"1 a:1\n", "feature id in 'a:1' is not a number"),
    "nan value": (b"1 3:nan\n", "is not finite"),
    "inf value": (b"1 3:inf\n", "is not finite"),
    "nan label": (b"nan 3:1\n", "label nan is not a finite number"),
    "label not allowed": (b"2 1:1\n", "label 2 not allowed"),
    "negative id": (b"1 -3:1\n", "is not a non-negative integer"),
    "fractional id": (b"1 1.5:1\n", "is not a non-negative integer"),
    "dangling colon": (b"1 4:\n", "malformed token"),
    "double colon": (b"1 4:1:2\n", "malformed token"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_line_names_file_and_line(tmp_path, capsys, case):
    bad, message = BAD[case]
    code, out = run_convert(tmp_path, GOOD + bad + GOOD)
    err = capsys.readouterr().err
    assert code == 1
    assert "in.txt:3: " in err and message in err, err
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.h5")) and not list(out.glob(".*tmp"))


def test_skip_bad_skips_and_counts(tmp_path, capsys):
    text = GOOD + BAD["bad token"][0] + GOOD + BAD["label not allowed"][0] + GOOD
    code, out = run_convert(tmp_path, text, "--skip-bad", "2")
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped 2 bad line(s)" in err and "in.txt:3:" in err and "in.txt:6:" in err
    import json
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 6 and manifest["skipped_lines"] == 2


def test_skip_bad_limit_exceeded(tmp_path, capsys):
    text = GOOD + BAD["bad token"][0] + BAD["nan value"][0] + GOOD
    code, out = run_convert(tmp_path, text, "--skip-bad", "1")
    assert code == 1
    assert "more than --skip-bad 1" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_empty_input(tmp_path, capsys):
    code, out = run_convert(tmp_path, b"")
    assert code == 1
    assert "no rows in the input" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "_SUCCESS").write_bytes(b"")
    assert main(["convert", str(tmp_path / "export"), "-o", str(tmp_path / "o")]) == 1
    assert "no input files" in capsys.readouterr().err


def test_missing_input(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 1
    assert "nope: no such file or directory" in capsys.readouterr().err


def test_truncated_gzip(tmp_path, capsys):
    data = gzip.compress(GOOD * 20000)
    code, out = run_convert(tmp_path, data[: len(data) // 2], name="cut.gz")
    assert code == 1
    err = capsys.readouterr().err
    assert "cut.gz: cannot decompress" in err and "truncated or corrupt" in err
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.h5"))


def test_existing_output_is_refused(tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes(GOOD)
    out = tmp_path / "out"
    assert main(["convert", str(source), "-o", str(out)]) == 0
    assert main(["convert", str(source), "-o", str(out)]) == 1
    assert "already holds a data set" in capsys.readouterr().err


@pytest.fixture
def converted(tmp_path):
    code, out = run_convert(tmp_path, GOOD * 100)
    assert code == 0
    return out


def test_verify_ok(converted, capsys):
    assert main(["verify", str(converted)]) == 0
    assert "OK" in capsys.readouterr().out


def test_corrupt_hdf5(converted, capsys):
    part = next(converted.glob("part-*.h5"))
    part.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    assert main(["verify", str(converted)]) == 1
    out = capsys.readouterr().out
    assert f"{part.name}: not a readable HDF5 file" in out
    assert main(["inspect", str(converted)]) == 1
    assert "not a readable HDF5 file" in capsys.readouterr().err


def test_changed_data_fails_checksum(converted, capsys):
    part = next(converted.glob("part-*.h5"))
    with h5py.File(part, "r+") as h5:
        h5["label"][0] = 1 - h5["label"][0]
    assert main(["verify", str(converted)]) == 1
    assert "checksum mismatch" in capsys.readouterr().out


def test_random_bytes_inside_a_partition_fail_reading_naming_the_file(converted):
    """4 KB of random bytes in the middle of a partition: HDF5's per-chunk
    checksum (fletcher32) or the reader's own checks refuse it, naming the file."""
    from mpips.data import load_manifest
    from mpips.data.reader import PartitionError, read_minibatches

    part = next(converted.glob("part-*.h5"))
    data = bytearray(part.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = np.random.default_rng(1).integers(
        0, 256, 4096, dtype=np.uint8).tobytes()
    part.write_bytes(bytes(data))
    with pytest.raises(PartitionError, match=str(part)):
        for _ in read_minibatches(load_manifest(converted).paths, 100):
            pass


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "sub/part.h5", ""])
def test_manifest_names_stay_inside_the_data_folder(converted, name):
    import json

    from mpips.data import load_manifest
    from mpips.data.manifest import ManifestError

    path = converted / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["partitions"][0]["name"] = name
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="is not a file name in"):
        load_manifest(converted)


def test_missing_manifest(converted, capsys):
    (converted / "manifest.json").unlink()
    assert main(["inspect", str(converted)]) == 1
    assert "no manifest" in capsys.readouterr().err


def test_stray_partition_reported(converted, capsys):
    part = next(converted.glob("part-*.h5"))
    shutil.copy(part, converted / "part-09999-0000.h5")
    assert main(["verify", str(converted)]) == 1
    assert "part-09999-0000.h5: not in the manifest" in capsys.readouterr().out


def test_cli_exit_code_and_help(tmp_path):
    proc = run_py("-m", "data_tools", "convert", str(tmp_path / "nope"), "-o",
                  str(tmp_path / "o"), timeout=60)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_py("-m", "data_tools", "--help", timeout=60)
    assert proc.returncode == 0 and "convert" in proc.stdout and "synth" in proc.stdout


def test_a_partition_that_differs_from_its_manifest_fails_naming_it(tmp_path):
    """Rows or nonzeros other than the manifest's (a partition replaced by
    another, or cut short): the reader refuses it when it opens, naming the
    file, instead of training on it."""
    import numpy as np

    from mpips.data import PartitionError, PartitionReader, load_manifest, read_minibatches
    from mpips.data.writer import Block, write_dataset
    keys = np.arange(1, 13, dtype=np.uint64)
    block = Block(np.ones(4, np.float32), np.array([0, 3, 6, 9, 12]), keys, None)
    write_dataset(tmp_path / "a", block, {"kind": "test"}, 2, "test")
    write_dataset(tmp_path / "b", block.slice(0, 3), {"kind": "test"}, 3, "test")
    parts = load_manifest(tmp_path / "a").partitions
    with PartitionReader(parts[0].path, expected=parts[0]) as r:  # as the manifest says
        assert r.rows == 2
    other = load_manifest(tmp_path / "b").partitions[0]  # 3 rows, 9 nonzeros
    with pytest.raises(PartitionError, match="holds 3 rows, 9 nonzeros.*manifest says 2 rows"):
        PartitionReader(other.path, expected=parts[0])
    with pytest.raises(PartitionError, match=other.path):
        list(read_minibatches([other.path], 2, expected=[parts[0]]))


@pytest.mark.parametrize("text,extra,message", [
    (b"1 5:1e39\n", [], "in.txt:3: value 1e+39 is outside float32's range"),
    (b"1e39 5:1\n", ["--labels", "real"], "in.txt:3: label 1e+39 is outside float32's range"),
])
def test_numbers_past_float32_are_errors_naming_the_line(tmp_path, capsys, text, extra,
                                                         message):
    """Data sets store float32: a number that fits float64 only (once +inf,
    with a numpy warning and exit 0) is an error naming file and line."""
    code, out = run_convert(tmp_path, GOOD + text + GOOD, *extra)
    err = capsys.readouterr().err
    assert code == 1 and message in err, err
    assert not (out / "manifest.json").exists() and not list(out.glob("*.h5"))


@pytest.mark.parametrize("arrow", ["1", "0"])
def test_csv_numbers_past_float32_are_errors_naming_the_line(tmp_path, capsys, monkeypatch,
                                                             arrow):
    monkeypatch.setenv("MPIPS_PYARROW_CSV", arrow)
    code, _ = run_convert(tmp_path, b"y,a\n1,0.5\n0,-2e40\n", "--format", "csv",
                          "--label", "y", "--numeric", "a", name="in.csv")
    err = capsys.readouterr().err
    assert code == 1 and "in.csv:3: column a = '-2e40' is outside float32's range" in err, err


def test_a_failed_overwrite_leaves_the_old_data_set_whole(tmp_path, capsys):
    """--overwrite converts beside the old data set and swaps only on success."""
    code, out = run_convert(tmp_path, GOOD * 10)
    assert code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _ = run_convert(tmp_path, GOOD + BAD["bad token"][0])
    assert code == 1 and "in.txt:3:" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new left
    assert main(["verify", str(out)]) == 0
    code, _ = run_convert(tmp_path, GOOD * 3)  # a good one replaces it
    assert code == 0
    import json
    assert json.loads((out / "manifest.json").read_text())["rows"] == 6
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "part-00000-0000.h5"]


def test_an_interrupted_converts_leftovers_do_not_block_the_next(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".part-00000-0000.h5.tmp").write_bytes(b"half a partition")
    (out / ".convert-staging").mkdir()
    source = tmp_path / "in.txt"
    source.write_bytes(GOOD)
    assert main(["convert", str(source), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "part-00000-0000.h5"]


def test_a_line_past_the_maximum_is_refused_before_it_is_read_whole(tmp_path, capsys):
    """Parsing takes ~35x a line's size in memory, and a line used to be
    copied again for every block read (a 200 MB line: 7 GB, 16 s): a line
    past --max-line-bytes is refused naming file and line, after reading
    just past the maximum; lines below it convert whatever the chunk size."""
    long_row = b"1" + b"".join(b" %d:1" % i for i in range(300_000)) + b"\n"  # ~3 MB
    code, out = run_convert(tmp_path, GOOD + long_row + GOOD, "--chunk-bytes", "256K",
                            "--max-line-bytes", "4M")
    assert code == 0
    import json
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 5 and manifest["nnz"] == 300_004
    code, out = run_convert(tmp_path, GOOD + long_row + GOOD, "--chunk-bytes", "256K",
                            "--max-line-bytes", "1M")
    err = capsys.readouterr().err
    assert code == 1 and "in.txt:3: line longer than 1048576 bytes (--max-line-bytes)" in err
    assert json.loads((out / "manifest.json").read_text()) == manifest  # the old set stays
