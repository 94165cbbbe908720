"""libsvm conversion: real files against scikit-learn, and the parser's corners."""

from __future__ import annotations

import bz2
import gzip

import numpy as np
import pytest
from sklearn.datasets import load_svmlight_file

from data_tools.formats import ConvertOptions
from data_tools.formats.base import BadLineBudget
from data_tools.formats.libsvm import LibSVM
from data_tools.sources import TextChunk
from mpips.data.manifest import load_manifest
from mpips.keys import hash_feature
from tests.fixtures.data_helpers import as_csr, convert_to, read_all
from tests.mpitools import shared_file


@pytest.mark.parametrize("name", ["adult.train.libsvm.gz", "news20.binary.train.libsvm.gz"])
def test_real_file_matches_sklearn(tmp_path, name):
    path = shared_file(name)
    ref_x, ref_y = load_svmlight_file(str(path), zero_based=True)
    out = convert_to(tmp_path, [path], keep_ids=True)
    labels, matrix = as_csr(out, ref_x.shape[1])
    np.testing.assert_array_equal(labels, (ref_y > 0).astype(np.float32))
    ref_x = ref_x.astype(np.float32).tocsr()
    ref_x.sum_duplicates()
    assert (matrix != ref_x).nnz == 0
    manifest = load_manifest(out)
    assert manifest.rows == ref_x.shape[0] and manifest.nnz == ref_x.nnz
    assert manifest.label_rate == pytest.approx(float((ref_y > 0).mean()))


def test_hashed_keys_are_hash_feature_of_ids(tmp_path):
    path = shared_file("adult.test.libsvm.gz")
    ids = read_all(convert_to(tmp_path, [path], keep_ids=True, name="ids"))[2]
    keys = read_all(convert_to(tmp_path, [path], salt=7, name="keys"))[2]
    np.testing.assert_array_equal(keys, hash_feature(ids, 7))


def _parse(text: bytes, **options):
    fmt = LibSVM(ConvertOptions(keep_ids=True, **options), BadLineBudget(0))
    chunk = TextChunk(text, 1, "t")
    return fmt.parse_fast(chunk), fmt.parse_slow(chunk)


CASES = {
    "plain": b"+1 1:0.5 3:2\n-1 2:1.25\n",
    "zero_one_labels": b"1 1:1 2:1\n0 4:1\n",
    "qid_and_comments": b"1 qid:3 1:0.5 # note 9:9\n# whole-line comment\n-1 qid:4 2:7\n",
    "optional_values": b"1 1 2:3 4\n-1 5\n",
    "exponent_and_long": b"1 1:1e-3 2:1.23456789012345678901 3:-4.5E+2\n",
    "tabs_crlf_blank": b"1\t1:2\r\n\n   \n-1 3:4   \r\n",
    "empty_row": b"1\n-1 2:3\n",
    "signs_dots": b"+1 1:+.5 2:-3. 3:0007\n",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_and_slow_paths_agree(case):
    fast, slow = _parse(CASES[case])
    assert fast is not None, "clean input must take the vectorised path"
    np.testing.assert_array_equal(fast.labels, slow.labels)
    np.testing.assert_array_equal(fast.indptr, slow.indptr)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    fv = fast.values if fast.values is not None else np.ones(fast.nnz, np.float32)
    sv = slow.values if slow.values is not None else np.ones(slow.nnz, np.float32)
    np.testing.assert_array_equal(fv, sv)


def test_parsed_values():
    fast, _ = _parse(CASES["qid_and_comments"] + CASES["optional_values"]
                     + CASES["exponent_and_long"])
    np.testing.assert_array_equal(fast.labels, [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(fast.indptr, [0, 1, 2, 5, 6, 9])
    np.testing.assert_array_equal(fast.indices, [1, 2, 1, 2, 4, 5, 1, 2, 3])
    np.testing.assert_allclose(fast.values, [0.5, 7, 1, 3, 1, 1, 1e-3, 1.2345678901, -450],
                               rtol=1e-6)


def test_real_labels():
    fast, _ = _parse(b"2.5 1:1\n-0.25 2:1\n", labels="real")
    np.testing.assert_array_equal(fast.labels, [2.5, -0.25])


def test_chunk_size_does_not_change_the_data(tmp_path):
    path = shared_file("adult.test.libsvm.gz")
    big = read_all(convert_to(tmp_path, [path], name="big"))
    small = read_all(convert_to(tmp_path, [path], name="small", chunk_bytes=4096))
    for a, b in zip(big, small, strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_manifest(tmp_path / "big").raw["partitions"][0]["sha256"] == \
        load_manifest(tmp_path / "small").raw["partitions"][0]["sha256"]


def test_gzip_bzip2_plain_give_the_same_data(tmp_path):
    text = b"".join(b"%d 1:%d.5 %d:2\n" % (i % 2, i, i + 2) for i in range(1000))
    (tmp_path / "a.txt").write_bytes(text)
    (tmp_path / "a.gz").write_bytes(gzip.compress(text))
    (tmp_path / "a.bz2").write_bytes(bz2.compress(text))
    results = [read_all(convert_to(tmp_path, [tmp_path / n], name=f"o{n}"))
               for n in ("a.txt", "a.gz", "a.bz2")]
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    assert results[0][0].size == 1000
