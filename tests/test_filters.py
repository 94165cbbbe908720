"""Filters (issue 6), in one process: every filter round-trips (exactly where
lossless; unbiased with bounded error where lossy), the key cache hits, misses,
evicts and forgets on ring changes in step at both ends, the significant filter
never loses mass, the KKT filter keeps L1 logistic regression as good while
skipping most features, and a whole chain survives the real wire format."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mpips import config
from mpips.app import Table
from mpips.filters import (
    ServerFilters,
    WorkerFilters,
    base,
    fixed_point,
    key_codec,
    parse_specs,
    value_codec,
)
from mpips.filters.key_cache import ReceiverKeyCache, SenderKeyCache
from mpips.filters.kkt import KKTFilter
from mpips.filters.significant import SignificantFilter
from mpips.handles import AdaGradL1, FTRLProximal
from mpips.keys import KEY_MAX, mix64
from mpips.kv.store import SortedStore
from mpips.transport import Message, Op
from mpips.transport.message import decode, encode


def hashed_keys(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.unique(mix64(rng.integers(0, 1 << 40, n, dtype=np.uint64)))


# ---- lossless: keys and values ---------------------------------------------------------
@pytest.mark.parametrize("codec", ["varint", "zlib"])
def test_key_codecs_round_trip_exactly(codec):
    cases = [np.empty(0, np.uint64), np.array([0], np.uint64), np.array([KEY_MAX], np.uint64),
             np.array([0, 1, 127, 128, 16383, 16384, KEY_MAX], np.uint64),
             hashed_keys(30000), np.arange(1000, dtype=np.uint64) * 3]
    for keys in cases:
        words = key_codec.encode_keys(keys, codec)
        assert words.dtype == np.uint64
        assert np.array_equal(key_codec.decode_keys(words, codec), keys)
    # hashed keys: deltas near 2**49 for 30,000 keys; varint needs 7 or 8 bytes each
    keys = hashed_keys(30000)
    if codec == "varint":
        assert key_codec.encode_keys(keys, codec).nbytes < 0.95 * keys.nbytes


def test_varint_rejects_truncated_input():
    data = key_codec.varint_encode(np.array([300, 5], np.uint64))
    with pytest.raises(ValueError, match="varint"):
        key_codec.varint_decode(data[:-1], 2)


@pytest.mark.parametrize("codec", ["zlib", "lz4", "zstd"])
@pytest.mark.parametrize("itemsize", [1, 4])
def test_value_codecs_round_trip_exactly(codec, itemsize):
    if not value_codec.available(codec):
        pytest.skip(f"{codec} not installed")
    rng = np.random.default_rng(1)
    vals = (rng.normal(size=10001) * (rng.random(10001) < 0.3)).astype(np.float32)
    raw = vals.view(np.uint8)
    packed = value_codec.compress(raw, codec, 1, itemsize)
    assert np.array_equal(value_codec.decompress(packed, codec), raw)
    assert packed.nbytes < raw.nbytes  # 70% zeros compress


# ---- lossy: fixed point ---------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16])
def test_fixed_point_is_unbiased_with_error_below_one_step(bits):
    rng = np.random.default_rng(2)
    v = rng.normal(size=500) * 3
    v[:50] = 0.0
    step = (v.max() - v.min()) / ((1 << bits) - 2)
    trials = 4000
    total = np.zeros_like(v)
    for _ in range(trials):
        payload, clipped = fixed_point.quantize(v, bits, rng)
        assert payload.nbytes == 32 + v.size * bits // 8 and clipped == 0
        d = fixed_point.dequantize(payload, np.float64)
        assert np.abs(d - v).max() < step * (1 + 1e-9)
        assert np.all(d[:50] == 0.0)  # zero is a grid point: sparsity survives
        total += d
    # the mean of many roundings converges to the value: each rounding error is
    # at most one step with variance <= step**2/4, so 6 sigma of the mean is
    # 3 * step / sqrt(trials)
    assert np.abs(total / trials - v).max() < 3 * step / np.sqrt(trials)


def test_fixed_point_given_range_clips_and_counts():
    rng = np.random.default_rng(3)
    v = np.array([-5.0, -0.5, 0.0, 0.5, 5.0])
    payload, clipped = fixed_point.quantize(v, 16, rng, value_range=1.0)
    d = fixed_point.dequantize(payload, np.float32)
    assert clipped == 2 and d.dtype == np.float32
    assert abs(d[0] + 1) < 1e-4 and abs(d[-1] - 1) < 1e-4 and d[2] == 0
    assert fixed_point.quantize(np.array([1.0, np.inf]), 8, rng) is None  # sent as is


# ---- key cache ---------------------------------------------------------------------------
def cache_pair(budget: int):
    s_stats, r_stats = base.FilterStats(), base.FilterStats()
    evicted = []
    return (SenderKeyCache(budget, s_stats),
            ReceiverKeyCache(budget, r_stats, lambda p, t, s: evicted.append(s)), evicted)


def send(sender, receiver, keys, version, peer=3, me=7):
    """One message through both caches; returns True on a hit."""
    sig = base.signature(keys)
    hit = sender.lookup(peer, 0, sig, keys.size, version)
    if hit:
        got = receiver.fetch(me, 0, sig, keys.size, version)
    else:
        receiver.store(me, 0, sig, keys, version)
        got = keys
    assert np.array_equal(got, keys)
    return hit


def test_key_cache_hit_miss_and_lru_eviction_in_step():
    lists = [hashed_keys(100, seed) for seed in range(4)]
    sender, receiver, evicted = cache_pair(budget=8 * 250)  # room for two lists
    assert [send(sender, receiver, k, 0) for k in lists[:2]] == [False, False]
    assert send(sender, receiver, lists[0], 0)           # hit: list 0 is now newest
    assert not send(sender, receiver, lists[2], 0)       # evicts list 1 (oldest)
    assert sender.stats.evictions == receiver.stats.evictions == 1
    assert evicted == [base.signature(lists[1])]
    assert send(sender, receiver, lists[0], 0)
    assert not send(sender, receiver, lists[1], 0)       # a miss falls back to keys
    assert send(sender, receiver, lists[1], 0)
    assert (sender.stats.hits, sender.stats.misses) == (3, 4)
    # a list larger than the budget is never cached, at either end
    big = hashed_keys(300, 9)
    assert not send(sender, receiver, big, 0) and not send(sender, receiver, big, 0)


def test_key_cache_ring_change_invalidates_and_in_flight_lists_still_resolve():
    keys = hashed_keys(100)
    sender, receiver, _ = cache_pair(budget=1 << 20)
    send(sender, receiver, keys, 0)
    sig = base.signature(keys)
    # a hit sent under version 0, still in flight while the receiver's own ring
    # changed: the receiver resets a peer's cache only on that peer's newer version
    assert sender.lookup(3, 0, sig, keys.size, 0)
    assert np.array_equal(receiver.fetch(7, 0, sig, keys.size, 0), keys)
    # after the ring change the sender sends full keys; the receiver resets
    assert not send(sender, receiver, keys, 1)
    assert send(sender, receiver, keys, 1)
    sender.clear()  # po.ring_listeners: everything forgotten
    assert not send(sender, receiver, keys, 1)
    with pytest.raises(ValueError, match="caches disagree"):
        receiver.fetch(7, 0, base.signature(hashed_keys(5, 1)), 5, 1)


def test_signature_differs_for_close_lists():
    keys = hashed_keys(1000)
    sigs = {base.signature(keys), base.signature(keys[1:]), base.signature(keys[:-1]),
            base.signature(np.sort(np.append(keys[1:], keys[0] + np.uint64(1))))}
    assert len(sigs) == 4


# ---- significant: nothing lost -------------------------------------------------------------
@pytest.mark.parametrize("relative", [False, True])
def test_significant_never_loses_accumulated_mass(relative):
    rng = np.random.default_rng(4)
    universe = hashed_keys(2000)
    f = SignificantFilter(vdim=2, threshold=1.0 if relative else 0.05, relative=relative)
    pushed = np.zeros(2)
    sent = np.zeros(2)
    dropped = 0
    for _ in range(200):
        keys = np.sort(rng.choice(universe, 300, replace=False))
        vals = (rng.normal(size=(300, 2)) * 0.03).astype(np.float32)
        k, v = f(keys, vals, np.dtype(np.float32))
        assert v.dtype == np.float32 and np.all(np.isin(k, keys))
        pushed += vals.astype(np.float64).sum(axis=0)
        sent += v.astype(np.float64).sum(axis=0)
        dropped += keys.size - k.size
    assert dropped > 0.3 * 200 * 300  # it does hold entries back
    np.testing.assert_allclose(sent + f.residuals.mass, pushed, rtol=0, atol=1e-9)
    # per key too: sent + residual == pushed, and take_all hands the rest over
    keys, rest = f.residuals.take_all()
    assert len(f.residuals) == 0 and np.abs(rest).max() <= (np.inf if relative else 0.05)
    np.testing.assert_allclose(sent + rest.sum(axis=0), pushed, atol=1e-9)


# ---- KKT on L1 logistic regression ----------------------------------------------------------
def l1_logistic_run(handle, kkt: KKTFilter | None, scale_sum: bool):
    """Minibatch L1 logistic regression: worker pulls, computes the gradient,
    (filters) and pushes to a SortedStore with the given handle. Returns the
    final training logloss, nonzero weights and the fraction of entries sent."""
    rng = np.random.default_rng(5)
    n, d, informative = 4000, 2000, 20
    w_true = np.zeros(d)
    w_true[:informative] = rng.normal(size=informative) * 2
    X = (rng.random((n, d)) < 0.02).astype(np.float64)
    X[:, :informative] = rng.random((n, informative)) < 0.3  # the signal is common
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w_true))).astype(np.float64)
    key_of_col = mix64(np.arange(d, dtype=np.uint64))
    store = SortedStore(1, np.float32, handle)
    sent = total = 0
    for _epoch in range(3):
        for a in range(0, n, 100):
            xb, yb = X[a:a + 100], y[a:a + 100]
            cols = np.flatnonzero(xb.any(axis=0))
            order = np.argsort(key_of_col[cols])  # kv keys are sorted
            keys, cols = key_of_col[cols][order], cols[order]
            w = store.pull(keys)
            if kkt is not None:
                kkt.observe(keys, w)
            p = 1 / (1 + np.exp(-(xb[:, cols] @ w[:, 0])))
            g = (xb[:, cols].T @ (p - yb) / (len(yb) if not scale_sum else 1.0))
            g = g.astype(np.float32)[:, None]
            k, v = (keys, g) if kkt is None else kkt(keys, g, np.dtype(np.float32))
            sent += k.size
            total += keys.size
            store.push(k, v)
    w = store.pull(np.sort(key_of_col))[:, 0]
    wcol = w[np.searchsorted(np.sort(key_of_col), key_of_col)]
    p = np.clip(1 / (1 + np.exp(-(X @ wcol))), 1e-12, 1 - 1e-12)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return loss, int(np.count_nonzero(w)), sent / total


@pytest.mark.parametrize("algo", ["adagrad_l1", "ftrl"])
def test_kkt_filter_skips_most_features_and_keeps_the_l1_model(algo):
    if algo == "adagrad_l1":
        l1, tolerance = 0.01, 0.002
        make = lambda: AdaGradL1(lr=0.1, l1=l1)  # noqa: E731
        kkt = KKTFilter(1, l1)
        scale_sum = False
    else:
        # FTRL's weight follows the running sum z: skipped gradients are kept
        # and sent later (accumulate), but n (sum of g**2) sees their sums, so
        # the model differs a little more than with a prox-step handle
        l1, tolerance = 5.0, 0.03
        make = lambda: FTRLProximal(alpha=0.1, beta=1.0, l1=l1)  # noqa: E731
        kkt = KKTFilter(1, l1, accumulate=True)
        scale_sum = True  # FTRL's l1 is in units of summed gradients
    base_loss, base_nnz, _ = l1_logistic_run(make(), None, scale_sum)
    loss, nnz, fraction_sent = l1_logistic_run(make(), kkt, scale_sum)
    print(f"{algo}: logloss {base_loss:.4f} -> {loss:.4f}, nonzero {base_nnz} -> {nnz}, "
          f"entries sent {fraction_sent:.1%}")
    assert fraction_sent < 0.3  # measured: 15% (adagrad_l1), 20% (ftrl)
    assert loss < base_loss + tolerance  # measured: -0.0000 and +0.018
    if kkt.residuals is not None:  # accumulate: what was skipped is still there
        assert len(kkt.residuals) > 0


# ---- a whole chain through the real wire format ------------------------------------------
def fake_po(overrides: list[str], rank: int):
    cfg = config.load(None, overrides)
    tables = [Table("w", vdim=2, dtype="float32"), Table("eval", vdim=1, dtype="float64")]
    return SimpleNamespace(cfg=cfg, tables=tables, table_ids={"w": 0, "eval": 1}, rank=rank,
                           ring=SimpleNamespace(version=0), ring_listeners=[])


def through_wire(msg: Message, source: int) -> Message:
    buf = np.concatenate([p.view(np.uint8) for p in encode(msg)])
    return decode(buf, source)


FULL = ['filters.push=["key_cache", "key_varint", "fixed_point", "zlib", "significant"]',
        'filters.pull=["key_cache", "key_varint", "fixed_point", "zlib"]',
        'filters.tables=["w"]', "filters.significant_threshold=0.0"]


def test_chain_round_trip_through_the_wire():
    wpo, spo = fake_po(FULL, rank=2), fake_po(FULL, rank=1)
    wf, sf = WorkerFilters(wpo, 0), ServerFilters(spo)
    rng = np.random.default_rng(6)
    keys = hashed_keys(5000)
    vals = rng.normal(size=(keys.size, 2)).astype(np.float32)
    sizes = []
    for op in (Op.PULL, Op.PUSH, Op.PULL):
        sent = None
        if op == Op.PUSH:
            sent = wf.filter_entries(keys, vals)
            assert np.array_equal(sent, vals)  # threshold 0: everything significant
        msg = wf.encode(Message(op=op, table=0, keys=[keys[:100], keys[100:]],
                                vals=None if sent is None else [sent[:100], sent[100:]],
                                vdim=2), dest=1)
        wire = through_wire(msg, source=2)
        sizes.append(wire.nbytes)
        got = sf.decode_request(wire)
        assert got.filters == 0 and np.array_equal(got.keys, keys)
        if op == Op.PUSH:
            step = (vals.max() - vals.min()) / 254
            assert got.vals.shape == (keys.size, 2) and got.vals.dtype == np.float32
            assert np.abs(got.vals - vals).max() <= step * 1.0001
        # the reply: 16-bit fixed point, then zlib
        reply = Message(op=Op.PULL_REPLY, table=0, vals=[vals[:10], vals[10:]], vdim=2)
        sf.encode_reply(reply)
        back = wf.decode_reply(through_wire(reply, source=1))
        assert back.vals.shape == vals.shape
        assert np.abs(back.vals - vals).max() <= (vals.max() - vals.min()) / 65534 * 1.0001
    # the first pull sent keys (varint), the push and the second pull only a signature
    assert sizes[1] < keys.size * 2 and sizes[2] < 200 < sizes[0]
    stats = wf.stats()
    assert stats["key_cache_lru"] == {"hits": 2, "misses": 1}
    assert stats["push"]["wire"]["bytes_after"] < stats["push"]["wire"]["bytes_before"] / 4
    # a table outside [filters] tables is left alone (no copy, no flags)
    eval_msg = Message(op=Op.PUSH, table=1, keys=keys[:3], vals=np.ones((3, 1)), vdim=1)
    assert WorkerFilters(wpo, 1).encode(eval_msg, 1).filters == 0


def test_cached_key_lists_come_back_exactly_and_carry_their_signature():
    """A list the key cache stored, and every hit of it, decodes to the keys
    sent, named by the signature under which the server caches its slots."""
    overrides = ['filters.push=["key_cache"]']
    wpo, spo = fake_po(overrides, rank=2), fake_po(overrides, rank=1)
    wf, sf = WorkerFilters(wpo, 0), ServerFilters(spo)
    for keys in (hashed_keys(300), hashed_keys(301)):
        flags = []
        for _ in range(2):  # stored, then a hit
            msg = wf.encode(Message(op=Op.PUSH, table=0, keys=keys,
                                    vals=np.ones((keys.size, 2), np.float32), vdim=2), dest=1)
            flags.append(msg.filters & (base.KEY_CACHE_STORE | base.KEY_CACHE_HIT))
            got = sf.decode_request(through_wire(msg, source=2))
            assert np.array_equal(got.keys, keys)
            assert got.key_signature == base.signature(keys)
        assert flags == [base.KEY_CACHE_STORE, base.KEY_CACHE_HIT]


def test_config_errors_name_the_key():
    with pytest.raises(config.ConfigError, match=r"\[filters\] push: 'nope'"):
        parse_specs(config.load(None, ['filters.push=["nope"]']), ["w"])
    with pytest.raises(config.ConfigError, match="kkt needs"):
        parse_specs(config.load(None, ['filters.push=["kkt"]']), ["w"])
    with pytest.raises(config.ConfigError, match="not a pull filter"):
        parse_specs(config.load(None, ['filters.pull=["significant"]']), ["w"])
    with pytest.raises(config.ConfigError, match="per_table: no table 'x'"):
        parse_specs(config.load(None, ['filters.per_table={x = {push = []}}']), ["w"])
    specs = parse_specs(config.load(None, ['filters.push=["zlib"]',
                                           'filters.per_table={eval = {pull = ["zlib"]}}']),
                        ["w", "eval"])
    assert specs[(0, "push")].names == {"zlib"} and specs[(1, "push")].names == set()
    assert specs[(1, "pull")].names == {"zlib"}


def test_held_back_entries_leave_the_cached_key_list_usable():
    """A push whose significant filter holds entries back still hits the list
    its pull cached: a bitmap names the entries sent, and they arrive intact."""
    over = FULL[:3] + ["filters.significant_threshold=0.5"]
    wpo, spo = fake_po(over, rank=2), fake_po(over, rank=1)
    wf, sf = WorkerFilters(wpo, 0), ServerFilters(spo)
    keys = hashed_keys(3000)
    vals = np.random.default_rng(7).normal(size=(keys.size, 2)).astype(np.float32)
    sf.decode_request(through_wire(wf.encode(Message(op=Op.PULL, table=0, keys=keys), 1), 2))
    filtered = wf.filter_entries(keys, vals)
    sent = np.abs(vals).max(axis=1) > 0.5
    assert 0 < sent.sum() < keys.size
    assert np.array_equal(filtered[sent], vals[sent]) and not filtered[~sent].any()
    assert np.allclose(wf.held_sum(), vals[~sent].sum(axis=0))
    msg = wf.encode(Message(op=Op.PUSH, table=0, keys=keys, vals=filtered, vdim=2), 1)
    got = sf.decode_request(through_wire(msg, 2))
    assert msg.filters & base.KEY_CACHE_HIT and msg.filters & base.ENTRY_MASK
    assert np.array_equal(got.keys, keys[sent]) and got.vals.shape == (sent.sum(), 2)
    step = (vals[sent].max() - vals[sent].min()) / 254
    assert np.abs(got.vals - vals[sent]).max() <= step * 1.0001
    assert wf.push.stat("significant").entries_dropped == keys.size - sent.sum()
