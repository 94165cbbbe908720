"""The stores' radix index (mpips/kv/index.py): the same positions as
np.searchsorted, by numba where installed and by numpy passes always."""

import numpy as np
import pytest

from mpips.keys import mix64
from mpips.kv import AdaGrad, SortedStore
from mpips.kv import index as index_module
from mpips.kv import store as store_module
from mpips.kv.index import RadixIndex

from .test_store import reference_run

KERNELS = ["numpy"] + (["numba"] if index_module.load_compiled_search() is not None else [])


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(index_module, "compiled_search", lambda: None)
        monkeypatch.setattr(index_module, "NUMPY_MIN_RUN", 0)  # the numpy passes, always
    return request.param


def queries_for(run: np.ndarray, rng) -> np.ndarray:
    """Stored keys, their neighbours, random keys, the extremes."""
    return np.concatenate([run, run - np.uint64(1), run + np.uint64(1),
                           rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True),
                           np.array([0, 2**64 - 1], dtype=np.uint64)])


@pytest.mark.parametrize("n", [1024, 5000, 200_000])
def test_search_matches_searchsorted_for_hashed_and_dense_keys(n, kernel):
    rng = np.random.default_rng(n)
    hashed = np.unique(mix64(np.arange(n, dtype=np.uint64)))
    dense = np.arange(3 * n, 5 * n, dtype=np.uint64)
    for run in (hashed, dense, hashed[hashed < hashed[n // 3]]):  # also a sub-range
        index = RadixIndex.build(run)
        if run.size < 1024:
            assert index is None
            continue
        assert index is not None
        q = queries_for(run, rng)
        for queries in (q, np.sort(q), q[:7]):  # any order, sorted, few
            np.testing.assert_array_equal(index.search(run, queries),
                                          np.searchsorted(run, queries))


def test_uneven_keys_get_no_index_and_the_wrong_run_is_refused():
    crowded = np.concatenate([np.arange(5000, dtype=np.uint64), np.array([2**63], np.uint64)])
    assert RadixIndex.build(crowded) is None  # one bucket would hold 5000 keys
    assert RadixIndex.build(np.arange(1000, dtype=np.uint64)) is None  # too few to pay
    run = np.arange(4096, dtype=np.uint64)
    with pytest.raises(ValueError, match="4096 keys asked about a run of 4095"):
        RadixIndex.build(run).search(run[:-1], run)


def test_store_builds_the_index_uses_it_and_drops_it_when_the_main_run_changes(kernel):
    store = SortedStore(1, np.float32, AdaGrad(lr=0.1))
    keys = np.sort(mix64(np.arange(100_000, dtype=np.uint64)))
    store.push(keys, np.ones(keys.size, np.float32))
    rng = np.random.default_rng(0)
    assert store._index is None
    for i in range(30):  # fresh lists: searched, until the index pays
        sub = np.sort(rng.choice(keys, 1000, replace=False))
        np.testing.assert_allclose(store.pull(sub, sender=i)[:, 0],
                                   store.pull(sub, sender=-i - 1)[:, 0])
    assert store._index is not None
    slots, found = store.locate(keys[::7])
    assert found.all()
    np.testing.assert_array_equal(slots, np.arange(0, keys.size, 7))
    # a bulk insert into the main run: the index describes the old run, so it goes
    store.push(np.sort(mix64(np.arange(10**6, 10**6 + 50_000, dtype=np.uint64))),
               np.ones(50_000, np.float32))
    assert store._index is None
    slots, found = store.locate(keys)
    assert found.all() and np.array_equal(store.keys[slots], keys)


@pytest.mark.parametrize("delta_min", [1 << 16, 64])
def test_store_with_the_index_from_the_first_search_matches_reference(delta_min, kernel,
                                                                       monkeypatch):
    monkeypatch.setattr(store_module, "DELTA_MIN", delta_min)
    monkeypatch.setattr(store_module, "INDEX_AFTER", 0.0)
    store, ref = reference_run(AdaGrad(lr=0.3), 2, np.float64)
    keys = np.array(sorted(ref), dtype=np.uint64)
    want = np.array([ref[k] for k in keys.tolist()]).reshape(-1, 2)
    np.testing.assert_allclose(store.pull(keys[::-1][::-1].copy(), sender="check"), want,
                               rtol=1e-5)


def test_the_kernel_is_loaded_after_enough_searching_not_at_a_run_size(monkeypatch):
    """numba's import and compilation cost CPU: a store of 2^16 keys or more
    must not start them before its searches could win that back."""
    started = []
    monkeypatch.setattr(index_module, "compiled_search", lambda: None)  # not loaded yet
    monkeypatch.setattr(index_module, "prepare_compiled_search", lambda: started.append(1))
    monkeypatch.setattr(index_module, "_searched", 0)
    monkeypatch.setattr(index_module, "COMPILED_AFTER_KEYS", 30_000)
    run = np.unique(mix64(np.arange(index_module.COMPILED_MIN_RUN + 10, dtype=np.uint64)))
    index = RadixIndex.build(run)
    small = np.unique(mix64(np.arange(2000, dtype=np.uint64)))
    small_index = RadixIndex.build(small)
    queries = run[::5][:10_000]
    for _ in range(2):
        index.search(run, queries)
        small_index.search(small, queries)  # a small run: its searches are not counted
    assert started == []  # 20000 keys searched in the large run
    index.search(run, queries)
    assert started  # 30000: the kernel starts loading
