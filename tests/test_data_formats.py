"""Criteo TSV, CSV and Parquet fixtures; the string hash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_tools.cli import main
from mpips.keys import fnv1a64, fnv1a64_text, hash_feature
from tests.fixtures.data_helpers import convert_to, read_all


def test_fnv1a64_known_values():
    # Reference values of 64-bit FNV-1a (Fowler/Noll/Vo test suite).
    got = fnv1a64(np.array([b"", b"a", b"foobar"]))
    assert [int(v) for v in got] == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C,
                                     0x85944171F73967E8]
    assert fnv1a64_text("foobar") == 0x85944171F73967E8
    assert int(fnv1a64(np.array(["héllo"]))[0]) == fnv1a64_text("héllo")


def criteo_line(label, ints, cats) -> bytes:
    fields = [str(label)] + ["" if v is None else str(v) for v in ints] + \
             ["" if c is None else c for c in cats]
    return ("\t".join(fields) + "\n").encode()


def test_criteo(tmp_path):
    lines = [criteo_line(1, [5, None, 0], ["68fd1e64", None]),
             criteo_line(0, [None, -2, 7], ["FFFFFFFF", "0a"])]
    path = tmp_path / "day_0"
    path.write_bytes(b"".join(lines) * 50)
    out = convert_to(tmp_path, [path], "criteo", criteo_ints=3, criteo_cats=2)
    labels, indptr, keys, values = read_all(out)
    assert labels.size == 100 and labels[:2].tolist() == [1, 0]
    i_key = [hash_feature(0, fnv1a64_text(f"I{j}")) for j in (1, 2, 3)]
    c1, c2 = fnv1a64_text("C1"), fnv1a64_text("C2")
    assert indptr[:3].tolist() == [0, 2, 6]
    assert keys[:5].tolist() == [int(i_key[0]), int(hash_feature(0x68FD1E64, c1)),
                                 int(i_key[1]), int(i_key[2]),
                                 int(hash_feature(0xFFFFFFFF, c1))]
    assert keys[5] == hash_feature(0x0A, c2)
    assert values[:6].tolist() == [5, 1, -2, 7, 1, 1]


def test_criteo_bad_lines(tmp_path, capsys):
    path = tmp_path / "day_0"
    path.write_bytes(criteo_line(1, [1, 2, 3], ["aa", "bb"])
                     + criteo_line(1, [1, "x", 3], ["aa", "bb"])
                     + criteo_line(1, [1, 2, 3], ["zz", "bb"])
                     + b"1\t2\n")
    code = main(["convert", str(path), "-f", "criteo", "--criteo-ints", "3",
                 "--criteo-cats", "2", "-o", str(tmp_path / "o"), "--skip-bad", "5"])
    err = capsys.readouterr().err
    assert code == 0
    assert "day_0:2: I2 = 'x' is not a number" in err
    assert "day_0:3: C1 = 'zz' is not a hexadecimal id" in err
    assert "day_0:4: 2 tab-separated fields, expected 6" in err


CSV = """clicked,age,country,device,ignored
1,34,de,phone,x
0,,fr,,y
-1,0.5,"de",tablet,z
"""


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_csv(tmp_path, newline):
    path = tmp_path / "part-00000.csv"
    path.write_bytes(CSV.replace("\n", newline).encode())
    out = convert_to(tmp_path, [path], "csv", label_column="clicked", numeric=["age"],
                     categorical=["country", "device"])
    labels, indptr, keys, values = read_all(out)
    assert labels.tolist() == [1, 0, 0]
    assert indptr.tolist() == [0, 3, 4, 7]
    age = hash_feature(0, fnv1a64_text("age"))
    de = hash_feature(fnv1a64_text("de"), fnv1a64_text("country"))
    assert keys[0] == age and keys[1] == de and keys[5] == de
    assert keys[3] == hash_feature(fnv1a64_text("fr"), fnv1a64_text("country"))
    assert values.tolist() == [34, 1, 1, 1, 0.5, 1, 1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hashing"]["categorical"] == ["country", "device"]


def test_csv_errors(tmp_path, capsys):
    path = tmp_path / "part-00000.csv"
    path.write_text(CSV + "1,abc,de,phone,x\n3,1,de,phone,x\n1,2\n")
    out = str(tmp_path / "o")
    code = main(["convert", str(path), "-f", "csv", "--label", "clicked", "--numeric", "age",
                 "--categorical", "country,device", "-o", out, "--skip-bad", "3"])
    err = capsys.readouterr().err
    assert code == 0
    assert "part-00000.csv:5: column age = 'abc' is not a number" in err
    assert "part-00000.csv:6: label 3 not allowed" in err
    assert "part-00000.csv:7: 2 fields" in err
    code = main(["convert", str(path), "-f", "csv", "--label", "nope", "-o", out,
                 "--overwrite"])
    assert code == 1 and "header has no column(s) nope" in capsys.readouterr().err


def tricky_csv(rows: int, seed: int) -> str:
    """Quotes, delimiters inside quotes, empty cells, unicode, CRLF, blank
    lines, numbers in every spelling, and a few bad rows."""
    rng = np.random.default_rng(seed)
    lines = ["clicked,age,price,country,device,note"]
    for i in range(rows):
        age = ["", "0", "34", "1e3", "-2.5", "+7", "0.000125"][i % 7]
        country = ['"de"', "fr", "", '"a,b"', "ü", '"say ""hi"""'][i % 6]
        label = ["1", "0", "-1", "1.0"][i % 4]
        line = f"{label},{age},{rng.random():.6f},{country},d{i % 13},n"
        if i % 997 == 5:
            line = "1,abc,1,de,x,n"  # a bad number
        elif i % 1499 == 7:
            line = "3,1,1,de,x,n"  # a label that is not allowed
        elif i % 1801 == 9:
            line = "1,2"  # too few fields
        elif i % 1301 == 11:
            line = "1,nan,1,de,x,n"  # not finite
        lines.append(line)
        if i % 500 == 3:
            lines.append("")
    return "\r\n".join(lines) + "\r\n"


def test_csv_by_pyarrow_is_the_line_parser_exactly(tmp_path, monkeypatch, capsys):
    """pyarrow.csv parses the chunks it can take whole; any chunk with a bad
    row goes line by line: the same partitions (checksums), the same skipped
    lines, the same messages, with and without pyarrow."""
    pytest.importorskip("pyarrow")
    path = tmp_path / "part-00000.csv"
    path.write_text(tricky_csv(20_000, 1), encoding="utf-8", newline="")
    got = {}
    for arrow in ("1", "0"):
        monkeypatch.setenv("MPIPS_PYARROW_CSV", arrow)
        out = tmp_path / f"out{arrow}"
        code = main(["convert", str(path), "-f", "csv", "--label", "clicked", "--numeric",
                     "age,price", "--categorical", "country,device", "-o", str(out),
                     "--skip-bad", "100", "--chunk-bytes", "65536"])
        assert code == 0
        err = capsys.readouterr().err
        manifest = json.loads((out / "manifest.json").read_text())
        got[arrow] = ([p["sha256"] for p in manifest["partitions"]], manifest["rows"],
                      manifest["skipped_lines"] if "skipped_lines" in manifest else None,
                      sorted(line for line in err.splitlines() if "part-00000.csv:" in line))
    assert got["1"] == got["0"]
    assert 19_000 < got["1"][1] < 20_000 and got["1"][3], got["1"]


def test_parquet_matches_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"clicked": [1, 0, -1], "age": [34.0, None, 0.5],
                      "country": ["de", "fr", "de"], "device": ["phone", None, "tablet"]})
    folder = tmp_path / "spark"
    folder.mkdir()
    pq.write_table(table, folder / "part-00000.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    (tmp_path / "x.csv").write_text(CSV)
    columns = {"label_column": "clicked", "numeric": ["age"],
               "categorical": ["country", "device"]}
    from_parquet = read_all(convert_to(tmp_path, [folder], "parquet", name="p", **columns))
    from_csv = read_all(convert_to(tmp_path, [tmp_path / "x.csv"], "csv", name="c", **columns))
    for a, b in zip(from_parquet, from_csv, strict=True):
        np.testing.assert_array_equal(a, b)


def test_parquet_bad_label(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({"y": [1, 0, 5], "x": [1.0, 2.0, 3.0]}), path)
    code = main(["convert", str(path), "-f", "parquet", "--label", "y", "--numeric", "x",
                 "-o", str(tmp_path / "o")])
    assert code == 1
    assert "part-00000.parquet: row 2: label 5 not allowed" in capsys.readouterr().err
