"""Registered key sets (mpips/kv/keyset.py): positions checked at the door,
slots resolved once per store change, and the same rows as requests by key."""

import numpy as np
import pytest

from mpips.handles import Add
from mpips.kv.keyset import KeySet, KeySetError, ServerKeySets
from mpips.kv.store import SortedStore


def store_of(keys):
    st = SortedStore(1, np.dtype(np.float32), Add())
    st.push(keys, np.arange(keys.size, dtype=np.float32).reshape(-1, 1))
    return st


def test_subset_checks_positions_once():
    ks = KeySet(np.array([3, 5, 9, 20], np.uint64), 1, "w")
    sub = ks.subset(np.array([0, 2, 3]))
    assert sub.keys.tolist() == [3, 9, 20] and sub.size == 3
    for bad in ([2, 1], [1, 1], [-1, 2], [0, 4]):
        with pytest.raises(ValueError):
            ks.subset(np.array(bad))
    with pytest.raises(ValueError, match="integer"):
        ks.subset(np.array([0.0, 1.0]))


def test_positions_go_on_the_wire_less_their_parts_offset():
    from mpips.kv.worker import wire_positions
    pos = np.array([4, 7, 9], np.int64)
    first = wire_positions(pos, 0)  # the set's first part: the caller's array, viewed
    assert first.dtype == np.uint64 and np.shares_memory(first, pos)
    assert wire_positions(pos, 4).view(np.int64).tolist() == [0, 3, 5]
    narrow = wire_positions(pos.astype(np.int32), 4)  # int32 positions widen, then shift
    assert narrow.dtype == np.uint64 and narrow.view(np.int64).tolist() == [0, 3, 5]
    assert wire_positions(pos.astype(np.int32), 0).view(np.int64).tolist() == [4, 7, 9]
    assert pos.tolist() == [4, 7, 9]


def test_translate_gives_the_slots_a_key_lookup_gives():
    keys = np.sort(np.random.default_rng(1).choice(1 << 40, 5000, replace=False)
                   .astype(np.uint64))
    cut = 2000
    st = store_of(keys[:cut:2])  # half the first range is stored; the rest is new
    sets = ServerKeySets()
    # two pieces, as ring.slice gives them: ranges 4 and 7 in one store each
    stores = {(0, 4): st, (0, 7): store_of(np.empty(0, np.uint64))}
    sets.register(2, 0, 11, keys, np.array([0, cut, keys.size]), np.array([4, 7]))
    pos = np.sort(np.random.default_rng(2).choice(keys.size, 700, replace=False))
    pieces, slots, keys_of = sets.translate(2, 0, 11, pos.view(np.uint64), stores)
    assert keys_of().tolist() == keys[pos].tolist()
    # stored 32-bit, handed out as intp: numpy would widen them on every use
    assert slots.dtype == np.intp
    a = int(np.searchsorted(pos, cut))
    assert pieces == [(4, 0, a), (7, a, pos.size)]
    # the set's keys are stored now (at the handle's initial value) ...
    assert len(st) == cut and len(stores[(0, 7)]) == keys.size - cut
    # ... and the slots read what a pull by key reads
    assert np.array_equal(st.pull_at(slots[:a].copy()), st.pull(keys[pos[:a]]))
    resolved = sets.resolved_keys
    sets.translate(2, 0, 11, pos.view(np.uint64), stores)
    assert sets.resolved_keys == resolved  # nothing changed: no lookup
    # an insert into the store's delta moves the delta's slots only: the
    # half of the range that registration inserted (there) is looked up again
    st.push(np.array([1], np.uint64), np.ones((1, 1), np.float32))
    pieces, slots, _ = sets.translate(2, 0, 11, pos.view(np.uint64), stores)
    assert sets.resolved_keys == resolved + cut // 2  # and only the changed range
    assert np.array_equal(st.pull_at(slots[:a].copy()), st.pull(keys[pos[:a]]))
    # a merge into the main run moves every slot: the whole range again
    st.compact()
    resolved = sets.resolved_keys
    pieces, slots, _ = sets.translate(2, 0, 11, pos.view(np.uint64), stores)
    assert sets.resolved_keys == resolved + cut
    assert np.array_equal(st.pull_at(slots[:a].copy()), st.pull(keys[pos[:a]]))
    every = np.arange(cut)  # every key of the range, not only pos's
    _, slots, _ = sets.translate(2, 0, 11, every.view(np.uint64), stores)
    assert np.array_equal(st.pull_at(slots.copy()), st.pull(keys[:cut]))


def test_slots_stay_right_through_inserts_into_the_delta_and_merges():
    """Other keys inserted between requests (small batches into the store's
    delta, large ones merged into its main run): a set's slots are those a
    lookup by key gives, every time."""
    rng = np.random.default_rng(7)
    universe = np.unique(rng.integers(1, 1 << 40, 60000).astype(np.uint64))
    mine = np.sort(rng.choice(universe, 3000, replace=False))
    others = np.setdiff1d(universe, mine)
    st = store_of(np.sort(rng.choice(others, 5000, replace=False)))
    sets = ServerKeySets()
    sets.register(1, 0, 1, mine, np.array([0, mine.size]), np.array([0]))
    stores = {(0, 0): st}
    every = np.arange(mine.size)
    for step in range(40):
        batch = np.sort(rng.choice(others, 20 if step % 7 else 20000, replace=False))
        st.push(batch, np.ones((batch.size, 1), np.float32))
        _, slots, _ = sets.translate(1, 0, 1, every.view(np.uint64), stores)
        assert np.array_equal(slots, st.locate(mine)[0]), step
    assert sets.resolved_keys < 40 * mine.size  # not every set key each time


def test_update_at_matches_pushpull_by_key():
    keys = np.arange(10, 1000, 7, dtype=np.uint64)
    by_key, by_slot = store_of(keys), store_of(keys)
    sets = ServerKeySets()
    sets.register(1, 0, 1, keys, np.array([0, keys.size]), np.array([0]))
    pos = np.array([0, 5, 6, 100, keys.size - 1])
    push = np.full((pos.size, 1), 2.5, np.float32)
    _, slots, _ = sets.translate(1, 0, 1, pos.view(np.uint64), {(0, 0): by_slot})
    got = by_slot.update_at(slots, push, want_rows=True)
    assert np.array_equal(got, by_key.pushpull(keys[pos], push))
    assert np.array_equal(by_slot.values, by_key.values)


def test_unknown_sets_and_positions_are_refused():
    sets = ServerKeySets()
    with pytest.raises(KeySetError, match="no key set 3 of rank 1"):
        sets.translate(1, 0, 3, np.array([0], np.uint64), {})
    sets.register(1, 0, 3, np.array([5, 6], np.uint64), np.array([0, 2]), np.array([0]))
    with pytest.raises(KeySetError, match="outside key set"):
        sets.translate(1, 0, 3, np.array([2], np.uint64), {})
    with pytest.raises(KeySetError, match="not owned"):
        sets.translate(1, 0, 3, np.array([1], np.uint64), {})
    sets.drop_sender(1)
    assert len(sets) == 0


def test_a_server_lets_go_of_a_dead_workers_key_sets():
    """Rank 1 serving a 5-rank job (scheduler 0, servers 1-2, workers 3-4):
    when MPI or the heartbeats report worker 4 gone, its sets go and a
    registration it sent before dying is not kept; worker 3's stay."""
    from mpips.app import Table
    from mpips.bench.scheduler import CountingVan
    from mpips.config import load
    from mpips.kv.server import KVServer
    from mpips.postoffice import Postoffice
    from mpips.transport import Message, Op

    cfg = load(None, ["layout.servers=2"])
    po = Postoffice(cfg, [Table("w", 1)], van=CountingVan(5, [0] * 5, rank=1))
    assert tuple(po.layout.servers) == (1, 2) and tuple(po.layout.workers) == (3, 4)
    server = KVServer(po)
    keys = np.arange(1, 1000, 7, dtype=np.uint64)

    def register(worker: int, ident: int) -> None:
        po.dispatch(Message(op=Op.KEYSET, sender=worker, table=0, keyset=ident, keys=keys,
                            ring_version=po.ring.version))

    for worker in (3, 4):
        register(worker, 1)
        register(worker, 2)
    assert len(server.keysets) == 4
    po.van.dead.add(4)  # as Van.mark_dead does, before the event
    po.dispatch(Message(op=Op.PEER_FAILED, sender=4, aux=4))
    assert len(server.keysets) == 2
    register(4, 3)  # in flight when it died
    assert len(server.keysets) == 2
    po.dispatch(Message(op=Op.PEER_FAILED, sender=2, aux=2))  # a server: nothing to drop
    assert len(server.keysets) == 2
