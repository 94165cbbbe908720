import numpy as np
import pytest

from mpips.keys import mix64
from mpips.kv import SGD, AdaGrad, Add, Assign, SortedStore, UserHandle
from mpips.kv import store as store_module


def reference_run(handle, vdim, dtype, rounds=40, seed=0):
    """Random pushes applied to a SortedStore and to a plain per-key reference."""
    rng = np.random.default_rng(seed)
    universe = np.sort(mix64(np.arange(5000, dtype=np.uint64)))
    store = SortedStore(vdim, dtype, handle)
    ref: dict[int, np.ndarray] = {}
    ref_state: dict[int, np.ndarray] = {}
    for i in range(rounds):
        # alternate fresh random subsets and repeats (run path, slot cache)
        if i % 4 == 3:
            keys = store.keys.copy()
        else:
            keys = np.sort(rng.choice(universe, rng.integers(0, 800), replace=False))
        pushed = rng.normal(size=(keys.size, vdim)).astype(dtype)
        store.push(keys, pushed, sender=i % 2)
        for k, p in zip(keys.tolist(), pushed, strict=True):
            v = ref.setdefault(k, np.full(vdim, handle.init, dtype))[None, :].copy()
            st = {n: ref_state.setdefault((n, k), np.zeros((1, vdim), dtype))
                  for n in handle.state}
            handle(v, p[None, :], st)
            ref[k] = v[0]
    return store, ref


@pytest.mark.parametrize("handle", [Add(), Assign(), SGD(lr=0.5), AdaGrad(lr=0.3)])
@pytest.mark.parametrize("vdim,dtype", [(1, np.float32), (4, np.float64)])
@pytest.mark.parametrize("delta_min", [1 << 16, 64])
def test_store_matches_reference(handle, vdim, dtype, delta_min, monkeypatch):
    """Also with a small delta limit: new keys go to the delta, which is
    compacted into the main run many times over."""
    monkeypatch.setattr(store_module, "DELTA_MIN", delta_min)
    store, ref = reference_run(handle, vdim, dtype)
    if delta_min == 64:
        assert store.compactions > 3
    keys = np.array(sorted(ref), dtype=np.uint64)
    got = store.pull(keys)
    want = np.array([ref[k] for k in keys.tolist()]).reshape(-1, vdim)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert len(store) == keys.size
    assert np.all(np.diff(store.keys.astype(object)) > 0)


def test_pull_of_unknown_keys_reads_init_and_does_not_insert():
    store = SortedStore(2, np.float32, Add(init=0.5))
    store.push(np.array([10, 20], np.uint64), np.ones((2, 2), np.float32))
    got = store.pull(np.array([5, 10, 15], np.uint64))
    np.testing.assert_array_equal(got, [[0.5, 0.5], [1.5, 1.5], [0.5, 0.5]])
    assert len(store) == 2


def test_pushpull_returns_updated_rows_and_slot_cache_follows_inserts():
    store = SortedStore(1, np.float32, Add())
    a = np.array([3, 7, 9], np.uint64)
    np.testing.assert_array_equal(store.pushpull(a, np.ones(3, np.float32))[:, 0], 1)
    store.push(np.array([1, 4, 8], np.uint64), np.ones(3, np.float32))
    sparse = np.array([1, 7, 8], np.uint64)
    store.pushpull(sparse, np.ones(3, np.float32), sender=5)   # caches slots
    store.push(np.array([0, 2], np.uint64), np.ones(2, np.float32))  # shifts slots
    got = store.pushpull(sparse, np.ones(3, np.float32), sender=5)
    np.testing.assert_array_equal(got[:, 0], [3, 3, 3])
    got = store.pushpull(sparse, np.ones(3, np.float32), sender=5)  # a cache hit
    np.testing.assert_array_equal(got[:, 0], [4, 4, 4])
    assert store.slot_cache_hits >= 1


def test_user_handle_and_bad_shapes():
    clip = UserHandle(fn=lambda v, p, s: np.clip(v + p, -1, 1, out=v))
    store = SortedStore(1, np.float64, clip)
    k = np.array([1, 2], np.uint64)
    store.push(k, np.array([5.0, -0.5]))
    np.testing.assert_array_equal(store.pull(k)[:, 0], [1.0, -0.5])
    with pytest.raises(ValueError, match="3 values for 2 keys"):
        store.push(k, np.ones(3))


def test_bytes_per_key_are_the_arrays_it_holds():
    """What the store says a key costs is what its key, value and state
    arrays hold: 8 + 4 + 4 bytes for float32 AdaGrad (no Python object per key)."""
    store = SortedStore(1, np.float32, AdaGrad())
    store.push(np.arange(1000, dtype=np.uint64), np.ones(1000, np.float32))
    held = store.keys.nbytes + store.values.nbytes + \
        sum(a.nbytes for a in store.state.values())
    assert held == store.nbytes == 1000 * (8 + 4 + 4)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 16])
def test_merge_in_place_matches_np_insert(monkeypatch, chunk):
    """Random inserts (none, at the front, in runs, past the end) through the
    chunked in-place merge give what np.insert gives, for keys and rows."""
    monkeypatch.setattr(store_module, "MERGE_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    for _ in range(60):
        n, m = int(rng.integers(0, 40)), int(rng.integers(0, 25))
        old = np.sort(rng.choice(1000, n, replace=False)).astype(np.uint64) * 2
        new_pos = np.sort(rng.integers(0, n + 1, m))
        new = rng.integers(0, 1 << 40, m).astype(np.uint64)
        rows = rng.normal(size=(n, 3)).astype(np.float32)
        fill = rng.normal(size=(m, 3)).astype(np.float32)
        kbuf = np.zeros(n + m + 5, np.uint64)
        kbuf[:n] = old
        rbuf = np.zeros((n + m + 5, 3), np.float32)
        rbuf[:n] = rows
        store_module.merge_in_place([kbuf, store_module._rows_1d(rbuf)], n, new_pos,
                                    [new, store_module._rows_1d(fill)])
        np.testing.assert_array_equal(kbuf[: n + m], np.insert(old, new_pos, new))
        np.testing.assert_array_equal(rbuf[: n + m], np.insert(rows, new_pos, fill, axis=0))


def test_inserts_grow_buffers_rarely_and_keep_spare_bounded():
    store = SortedStore(1, np.float32, AdaGrad(init=0.25))
    rng = np.random.default_rng(3)
    universe = np.sort(mix64(np.arange(200_000, dtype=np.uint64)))
    grown = 0
    last = None
    for _ in range(20):
        keys = np.sort(rng.choice(universe, 10_000, replace=False))
        store.push(keys, np.ones(keys.size, np.float32))
        base = store.keys.base
        grown += base is not last
        last = base
    assert grown < 12
    # buffers grow to twice what they need: address space, bounded
    assert store.reserved_bytes <= 2 * len(store) * (8 + 4 + 4)
    fresh = np.setdiff1d(universe, store.keys)[:5]
    np.testing.assert_array_equal(store.pull(fresh)[:, 0], 0.25)


def test_new_keys_take_the_delta_then_the_main_run_and_slots_stay_right():
    """Small inserts go to the delta (the main run does not move), an insert
    that overflows it merges delta and new keys into the main run, a bulk
    load goes straight there; pushpull results show every slot was right."""
    store = SortedStore(1, np.float64, Add())
    universe = np.sort(mix64(np.arange(400_000, dtype=np.uint64)))
    main = universe[::2]
    store.push(main, np.ones(main.size))                 # bulk load: main run
    assert (store._main, store._delta) == (main.size, 0)
    rng = np.random.default_rng(1)
    counts = dict.fromkeys(main.tolist(), 1.0)
    for size in (5_000, 40_000, 120_000):               # delta, delta, into the main run
        keys = np.sort(rng.choice(universe, size, replace=False))
        got = store.pushpull(keys, np.ones(size))[:, 0]
        for k in keys.tolist():
            counts[k] = counts.get(k, 0.0) + 1
        np.testing.assert_array_equal(got, [counts[k] for k in keys.tolist()])
    assert store.compactions == 1 and store._delta == 0
    store.push(universe[:10], np.ones(10))  # lands in the delta again
    assert store._delta > 0
    for k in universe[:10].tolist():
        counts[k] = counts.get(k, 0.0) + 1
    keys = np.array(sorted(counts), dtype=np.uint64)
    np.testing.assert_array_equal(store.pull(keys)[:, 0], [counts[k] for k in keys.tolist()])
    np.testing.assert_array_equal(store.keys, keys)     # compacts: one sorted run
    assert store._delta == 0 and store.compactions == 2


@pytest.mark.parametrize("n,m", [(10, 5), (300_000, 100), (300_000, 200_000), (1 << 17, 70_000)])
def test_search_sorted_matches_numpy(n, m):
    rng = np.random.default_rng(n + m)
    stored = np.sort(mix64(np.arange(n, dtype=np.uint64)))
    queries = np.sort(np.concatenate([rng.choice(stored, m // 2),  # some stored, some not
                                      mix64(np.arange(n, n + m - m // 2, dtype=np.uint64)),
                                      stored[[0, -1]]]))
    np.testing.assert_array_equal(store_module.search_sorted(stored, queries),
                                  np.searchsorted(stored, queries))


def test_the_list_before_last_is_remembered_for_pull_ahead():
    """A worker pulls minibatch i+1's weights before it pushes minibatch i's
    gradient: the push repeats the list before last, and finds its slots
    (same rows updated as without the cache)."""
    rng = np.random.default_rng(3)
    keys = np.unique(mix64(np.arange(50_000, dtype=np.uint64)))
    lists = [np.unique(rng.choice(keys, 3000)) for _ in range(6)]
    cached, plain = (SortedStore(1, "float32", Add()) for _ in range(2))
    for store in (cached, plain):
        store.push(keys, np.zeros((keys.size, 1), np.float32))
    cached.pull(lists[0], sender=7)
    for i in range(5):
        cached.pull(lists[i + 1], sender=7)
        cached.push(lists[i], np.ones((lists[i].size, 1), np.float32), 7)
        plain.push(lists[i], np.ones((lists[i].size, 1), np.float32), -1)
    assert cached.slot_cache_hits == 5
    np.testing.assert_array_equal(cached.pull(keys), plain.pull(keys))
    # another requester's lists are its own
    other = np.unique(rng.choice(keys, 3000))
    cached.pull(other, sender=8)
    cached.push(lists[5], np.ones((lists[5].size, 1), np.float32), 8)
    assert cached.slot_cache_hits == 5
