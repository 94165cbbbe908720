"""The partition reader, the localiser and the [data] job section."""

from __future__ import annotations

import numpy as np
import pytest

from mpips import config
from mpips.data import PartitionReader, load_manifest, localise, read_minibatches
from tests.fixtures.data_helpers import convert_to, read_all
from tests.mpitools import shared_file


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adult")
    return convert_to(tmp, [shared_file("adult.test.libsvm.gz")],
                      spec_kw={"target_rows": 5000})


@pytest.mark.parametrize("chunk_rows,batch", [(1, 1), (7, 3), (1000, 100), (65536, 1000)])
def test_chunking_gives_the_same_rows(adult, chunk_rows, batch):
    labels, indptr, keys, values = read_all(adult)
    paths = load_manifest(adult).paths
    batches = list(read_minibatches(paths, batch, chunk_rows)) if chunk_rows > 1 else [
        mb for p in paths[:1] for mb in PartitionReader(p, 1).minibatches(1)]
    rows = sum(mb.rows for mb in batches)
    if chunk_rows == 1:  # first partition only: one row at a time is slow
        labels, indptr = labels[:rows], indptr[:rows + 1]
        keys = keys[:indptr[-1]]
    assert rows == labels.size
    assert max(mb.rows for mb in batches) <= batch
    np.testing.assert_array_equal(np.concatenate([mb.labels for mb in batches]), labels)
    np.testing.assert_array_equal(np.concatenate([mb.keys for mb in batches]), keys)
    lengths = np.concatenate([np.diff(mb.indptr) for mb in batches])
    np.testing.assert_array_equal(lengths, np.diff(indptr))
    assert all(mb.indptr[0] == 0 and mb.indptr[-1] == mb.nnz for mb in batches)


def test_reader_memory_is_one_chunk(adult):
    path = load_manifest(adult).paths[0]
    with PartitionReader(path, chunk_rows=100) as reader:
        assert reader.rows == 5000
        assert all(chunk.rows <= 100 for chunk in reader.chunks())
        assert reader.attrs["hashing"]["method"] == "mpips.keys.hash_feature"


def test_localise_matches_unique():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**64, 500, dtype=np.uint64)[rng.integers(0, 500, 5000)]
    unique, columns = localise(keys)
    ref_unique, ref_inverse = np.unique(keys, return_inverse=True)
    np.testing.assert_array_equal(unique, ref_unique)
    np.testing.assert_array_equal(columns, ref_inverse)
    assert columns.dtype == np.int32 and unique.dtype == np.uint64
    empty_unique, empty_columns = localise(np.zeros(0, np.uint64))
    assert empty_unique.size == 0 and empty_columns.size == 0


def _localise_cases() -> list[np.ndarray]:
    """Hashed keys, small ids, duplicates, one repeated key, every digit
    equal in some passes, the largest keys, and keys that share their
    leading 32 bits (the radix sort's repairs: by runs, or whole)."""
    rng = np.random.default_rng(4)
    hashed = rng.integers(0, 2**64, 300, dtype=np.uint64)
    return [rng.integers(0, 2**64, 20_000, dtype=np.uint64, endpoint=False),
            rng.integers(0, 300, 9000).astype(np.uint64),
            np.full(5000, 2**64 - 1, np.uint64),
            (rng.integers(0, 50, 6000).astype(np.uint64) << np.uint64(40)),
            np.r_[np.uint64(0), np.uint64(2**64 - 1), rng.integers(0, 2**64, 4200,
                                                                   dtype=np.uint64)],
            (rng.integers(0, 20, 30_000).astype(np.uint64) << np.uint64(40))
            | rng.integers(0, 2**20, 30_000).astype(np.uint64),
            np.repeat(hashed, 3)[rng.permutation(900)],
            np.array([7], np.uint64),
            # small ids and one large key (the bias key of --keep-ids data):
            # nearly all keys share their leading 32 bits
            rng.permutation(np.r_[rng.integers(0, 5000, 20_000).astype(np.uint64),
                                  np.full(100, 2**63 + 12345, np.uint64)])]


def test_radix_localise_is_the_numpy_one_exactly():
    """The default path (numpy's 16-bit radix sort on the leading bits, then
    the ties repaired) against the argsort reference."""
    import importlib
    loc = importlib.import_module("mpips.data.localise")
    cases = _localise_cases()
    collided = cases[5] >> np.uint64(13)  # the leading 32 bits of case 5
    assert np.unique(collided).size < np.unique(cases[5]).size  # ties to repair
    for keys in cases:
        unique, columns = loc.localise_radix(keys)
        ref_unique, ref_columns = loc.localise_numpy(keys)
        np.testing.assert_array_equal(unique, ref_unique)
        np.testing.assert_array_equal(columns, ref_columns)
        assert columns.dtype == np.int32 and unique.dtype == np.uint64


def test_compiled_localise_is_the_numpy_one_exactly():
    """The radix-sort kernel (numba, the fast extra) against numpy's path."""
    import importlib
    loc = importlib.import_module("mpips.data.localise")
    kernel = loc.KERNEL.load()
    if kernel is None:
        pytest.skip(f"no compiled localise: {loc.KERNEL.why_not()}")
    for keys in _localise_cases():
        if keys.size < loc.COMPILED_MIN_KEYS:
            continue
        unique, columns = loc.localise(keys)  # >= COMPILED_MIN_KEYS: the kernel
        ref_unique, ref_columns = loc.localise_numpy(keys)
        np.testing.assert_array_equal(unique, ref_unique)
        np.testing.assert_array_equal(columns, ref_columns)
        assert columns.dtype == np.int32 and unique.dtype == np.uint64
        assert np.array_equal(unique[columns], keys)


def test_localised_minibatch(adult):
    path = load_manifest(adult).paths[0]
    with PartitionReader(path) as reader:
        mb = next(reader.minibatches(50))
    unique, matrix = mb.localised()
    assert matrix.shape == (50, unique.size)
    assert np.all(unique[1:] > unique[:-1])
    np.testing.assert_array_equal(unique[matrix.indices], mb.keys)


def test_data_section_defaults_and_overrides():
    cfg = config.load(None, ["data.train=data/news20", "data.minibatch=64"])
    assert cfg.data.train == "data/news20" and cfg.data.minibatch == 64
    assert cfg.data.epochs == 1 and cfg.data.shuffle is True
    with pytest.raises(config.ConfigError, match="minibatch"):
        config.load(None, ["data.minibatch=0"])


def test_the_value_scale_reads_only_values_and_no_file_for_binary_data(tmp_path, monkeypatch):
    """lr_scale = auto: every rank reads the first partition's values; a
    binary data set (no values stored) opens no file at all."""
    from mpips.apps.linear import app as linear_app
    text = tmp_path / "real.libsvm"
    text.write_text("1 1:0.5 3:-1.5\n0 2:2.0\n1 1:1.0 2:0.25 4:3.0\n")
    binary = tmp_path / "binary.libsvm"
    binary.write_text("1 1:1 3:1\n0 2:1\n")
    real, ones = convert_to(tmp_path, [text], name="real"), convert_to(tmp_path, [binary],
                                                                        name="ones")
    path = load_manifest(real).paths[0]
    with PartitionReader(path) as reader:
        np.testing.assert_allclose(reader.read_values(0, 2), [0.5, -1.5, 2.0])
        np.testing.assert_allclose(reader.read_values(1, 99), [2.0, 1.0, 0.25, 3.0])
    assert linear_app.value_scale(load_manifest(real)) == pytest.approx(8.25 / 6)
    assert linear_app.value_scale(load_manifest(real), sample_rows=1) == pytest.approx(1.0)
    opened = []
    monkeypatch.setattr(linear_app, "PartitionReader", lambda *a: opened.append(a))
    assert linear_app.value_scale(load_manifest(ones)) == 1.0 and opened == []
