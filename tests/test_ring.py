import numpy as np
import pytest

from mpips.keys import KEY_MAX, check_keys, hash_feature, mix64
from mpips.ring import KeyRing, equal_cuts


def test_mix64_known_values_and_bijection():
    # SplitMix64's first outputs for seed 0 are mix64(0), mix64(golden), ...:
    # the published sequence starts 0xE220A8397B1DCDAF.
    assert int(mix64(0)) == 0xE220A8397B1DCDAF
    x = np.arange(1_000_000, dtype=np.uint64)
    assert np.unique(mix64(x)).size == x.size
    # Every output bit is used: the top bits of consecutive ids are balanced.
    top = (mix64(x) >> np.uint64(63)).mean()
    assert 0.49 < top < 0.51


def test_hash_feature_salt_separates_fields():
    ids = np.arange(1000)
    a, b = hash_feature(ids, salt=1), hash_feature(ids, salt=2)
    assert np.intersect1d(a, b).size == 0
    assert np.array_equal(hash_feature(ids), mix64(ids.astype(np.uint64)))
    with pytest.raises(ValueError):
        hash_feature(np.array([-1]))


@pytest.mark.parametrize("servers,virtual,k", [(1, 1, 0), (3, 1, 1), (4, 5, 2), (7, 3, 6)])
def test_every_key_in_exactly_one_range(servers, virtual, k):
    ring = KeyRing(servers, virtual, k)
    assert ring.num_ranges == servers * virtual
    assert ring.bounds[0] == 0 and np.all(np.diff(ring.bounds.astype(object)) > 0)
    rng = np.random.default_rng(0)
    keys = np.unique(np.concatenate([
        rng.integers(0, 2**64 - 1, 50_000, dtype=np.uint64, endpoint=True),
        ring.bounds, ring.bounds[1:] - np.uint64(1), np.array([0, KEY_MAX], np.uint64)]))
    starts, ranges = ring.slice(keys)
    assert starts[0] == 0 and starts[-1] == keys.size
    assert np.all(np.diff(starts) > 0)
    for j, r in enumerate(ranges):
        lo, hi = ring.range_of(int(r))
        seg = keys[starts[j]:starts[j + 1]].astype(object)
        assert seg.min() >= lo and seg.max() < hi
    # Replicas are distinct from the owner and from each other.
    for r in range(ring.num_ranges):
        reps = ring.replicas(r)
        assert len(reps) == k and len(set(reps)) == k
        assert int(ring.owners[r]) not in reps


def test_slice_by_server_groups_segments():
    ring = KeyRing(3, 4)
    keys = np.sort(mix64(np.arange(10_000, dtype=np.uint64)))
    by_server = ring.slice_by_server(keys)
    covered = sorted((a, b) for segs in by_server.values() for _, a, b in segs)
    assert covered[0][0] == 0 and covered[-1][1] == keys.size
    assert all(covered[i][1] == covered[i + 1][0] for i in range(len(covered) - 1))
    for server, segs in by_server.items():
        assert all(int(ring.owners[r]) == server for r, _, _ in segs)


def test_slice_empty_and_ring_errors():
    ring = KeyRing(2)
    starts, ranges = ring.slice(np.empty(0, np.uint64))
    assert ranges.size == 0 and list(starts) == [0]
    with pytest.raises(ValueError, match="k=2 needs k < servers=2"):
        KeyRing(2, 1, 2)
    with pytest.raises(ValueError):
        KeyRing(0)


def test_check_keys_rejects_bad_keys():
    with pytest.raises(ValueError, match="unsorted key 3 at position 1"):
        check_keys(np.array([5, 3], np.uint64))
    with pytest.raises(ValueError, match="duplicate"):
        check_keys(np.array([1, 2, 2], np.uint64))
    with pytest.raises(TypeError):
        check_keys(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="non-negative"):
        check_keys(np.array([-1, 2]))
    assert check_keys(np.array([1, 2], np.int64)).dtype == np.uint64


def test_failover_moves_ranges_to_the_first_live_successor():
    ring = KeyRing(4, 2, replication=1)
    assert [ring.holders(r) for r in range(4)] == [[0, 1], [1, 2], [2, 3], [3, 0]]
    after = ring.without(1)
    assert after.version == 1 and after.dead == {1}
    # server 1's ranges (1 and 5) go to server 2, which held their replica
    assert after.owners[1] == 2 and after.owners[5] == 2
    assert after.holders(0) == [0, 2] and after.holders(1) == [2, 3]
    assert after.holders(3) == [3, 0]
    two = after.without(2)
    assert two.holders(1) == [3, 0] and set(two.live_servers) == {0, 3}
    with pytest.raises(Exception, match="every server"):
        KeyRing(2, 1, 1).without(0).without(1)


def spread(servers: int, hosts: int) -> tuple[int, ...]:
    """Host ids of servers dealt from the hosts in turn (the layout's spread)."""
    return tuple(s % hosts for s in range(servers))


@pytest.mark.parametrize("servers,hosts,virtual,k", [
    (4, 3, 1, 1), (5, 2, 1, 1), (3, 2, 1, 1), (7, 3, 4, 2), (6, 3, 2, 2), (8, 4, 3, 3)])
def test_replicas_never_share_the_owners_host(servers, hosts, virtual, k):
    """The ring wraps round (server S-1's successor is server 0), so plain
    successors can sit on the owner's host: 4 servers on 3 hosts, any odd
    count on 2. Holders are picked one per host at a time."""
    host_of = spread(servers, hosts)
    ring = KeyRing(servers, virtual, k, hosts=host_of)
    plain = KeyRing(servers, virtual, k)
    for r in range(ring.num_ranges):
        assert len({host_of[s] for s in ring.holders(r)}) == k + 1, (r, ring.holders(r))
    # the plain ring does put some replica on its owner's host in these layouts
    shared = [r for r in range(plain.num_ranges)
              if len({host_of[s] for s in plain.holders(r)}) < k + 1]
    assert shared or servers % hosts == 0


def test_uneven_hosts_and_one_failure_keep_replicas_off_the_owners_host():
    host_of = (0, 0, 0, 1, 1, 2)  # three servers on host 0
    ring = KeyRing(6, 2, 1, hosts=host_of)
    for r in range(ring.num_ranges):
        owner, replica = ring.holders(r)
        assert host_of[owner] != host_of[replica]
    for dead in range(6):  # any one server dies: k + 1 = 2 < 3 hosts remain
        after = ring.without(dead)
        for r in range(after.num_ranges):
            holders = after.holders(r)
            assert dead not in holders and len({host_of[s] for s in holders}) == 2
            # failover is a status change: the new owner held a copy before
            assert holders[0] in ring.holders(r)


def test_one_host_keeps_the_plain_ring_order():
    a, b = KeyRing(5, 3, 2), KeyRing(5, 3, 2, hosts=(7,) * 5)
    assert [a.holders(r) for r in range(a.num_ranges)] == \
        [b.holders(r) for r in range(b.num_ranges)]
    assert b.hosts_of_copies == 1 and KeyRing(4, 1, 1, hosts=spread(4, 2)).hosts_of_copies == 2


def preference_order(servers: int, hosts: tuple[int, ...], home: int) -> list[int]:
    """The preference order written out in full (the ring's definition):
    ring order from home, one server per host in each round."""
    pending = [(home + i) % servers for i in range(servers)]
    order: list[int] = []
    while pending:
        used, rest = set(), []
        for s in pending:
            if hosts and hosts[s] in used:
                rest.append(s)
            else:
                order.append(s)
                if hosts:
                    used.add(hosts[s])
        pending = rest if hosts else []
    return order


def reference_holders(servers: int, hosts: tuple[int, ...], deaths: list[int], home: int,
                      want: int) -> list[int]:
    """The first ``want`` of the order, then each death in turn: the dead one
    leaves, and the row is filled from the order with a live server of a
    host the row does not use yet, else the next live one."""
    order = preference_order(servers, hosts, home)
    row, gone = order[:want], set()
    for d in deaths:
        gone.add(d)
        if d not in row:
            continue
        row.remove(d)
        while len(row) < want:
            live = [s for s in order if s not in gone and s not in row]
            if not live:
                break
            used = {hosts[s] for s in row} if hosts else set()
            fresh = [s for s in live if not hosts or hosts[s] not in used]
            row.append((fresh or live)[0])
    return row


def test_owners_and_replicas_follow_the_definition_exactly():
    """The ring finds each range's holders without writing out whole
    preference orders (O(S^2) at thousands of servers): the same holders as
    the full definition, for random hosts, counts and death sequences."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        servers = int(rng.integers(1, 40))
        k = int(rng.integers(0, min(servers, 4)))
        nhosts = int(rng.integers(1, 6))
        hosts = () if rng.random() < 0.2 else tuple(int(h) for h in rng.integers(0, nhosts,
                                                                                 servers))
        deaths = rng.choice(servers, int(rng.integers(0, servers)), replace=False).tolist()
        ring = KeyRing(servers, int(rng.integers(1, 4)), k, hosts=hosts).without_all(deaths, 1)
        for r in range(ring.num_ranges):
            want = reference_holders(servers, hosts, deaths, r % servers, k + 1)
            assert ring.holders(r) == want, (servers, hosts, deaths, k, r)


def test_after_any_failures_replicas_stay_off_the_owners_host_and_failover_keeps_data():
    """Deaths one after another (a range always keeping a live copy): the new
    owner of a range always held a copy before, and while the live servers
    span k + 1 hosts, the owner and replicas sit on k + 1 hosts. A rank that
    missed some ring versions gets the same ring from the death list."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        nhosts = int(rng.integers(2, 6))
        servers = int(rng.integers(nhosts, 16))
        hosts = tuple(int(h) for h in rng.integers(0, nhosts, servers))
        k = int(rng.integers(1, min(servers, 3)))
        ring = KeyRing(servers, int(rng.integers(1, 3)), k, hosts=hosts)
        for victim in rng.permutation(servers)[: servers - 1].tolist():
            after = ring.without(victim)
            for r in range(ring.num_ranges):
                before = ring.holders(r)
                if set(before) <= after.dead:
                    break  # every copy gone: the scheduler fails the job here
                assert after.holders(r)[0] in before  # failover: the owner had a copy
                live_hosts = {hosts[s] for s in after.live_servers}
                if len(live_hosts) >= k + 1:
                    assert len({hosts[s] for s in after.holders(r)}) == k + 1, \
                        (hosts, after.deaths, r, after.holders(r))
            else:
                replayed = KeyRing(servers, ring.virtual_servers, k,
                                   hosts=hosts).without_all(list(after.deaths), after.version)
                assert [replayed.holders(r) for r in range(ring.num_ranges)] == \
                    [after.holders(r) for r in range(ring.num_ranges)]
                ring = after
                continue
            break


def testequal_cuts_are_exact_at_any_range_count():
    for n in (1, 2, 3, 7, 1000, 96_000, 3 * 10**6 + 1):
        ring_cuts = KeyRing(n, 1).bounds if n <= 1000 else None
        cuts = equal_cuts(n)
        picks = np.unique(np.r_[0, 1, n // 2, n - 1, np.arange(0, n, max(1, n // 97))])
        picks = picks[picks < n]
        assert [int(cuts[r]) for r in picks] == [(int(r) << 64) // n for r in picks]
        if ring_cuts is not None:
            assert np.array_equal(ring_cuts, cuts)


def test_unmix64_inverts_mix64_and_names_features():
    from mpips.keys import feature_names, fnv1a64_text, unmix64
    x = np.random.default_rng(9).integers(0, 2**64 - 1, 10_000, dtype=np.uint64, endpoint=True)
    assert np.array_equal(unmix64(mix64(x)), x)
    ids = np.array([0, 1, 123456, 2**40], np.uint64)
    hashed = {"method": "mpips.keys.hash_feature", "salt": 99}
    assert feature_names(hash_feature(ids, 99), hashed) == ["0", "1", "123456", str(2**40)]
    assert feature_names(ids, {"method": "identity"}) == ["0", "1", "123456", str(2**40)]
    criteo = {"method": "mpips.keys.hash_feature", "columns": ["label", "I1", "C1", "C2"]}
    keys = np.array([hash_feature(0, fnv1a64_text("I1")),
                     hash_feature(0x68FD1E64, fnv1a64_text("C2"))], np.uint64)
    assert feature_names(keys, criteo) == ["I1", "C2=68fd1e64"]
    assert feature_names(keys[:1], None) == [f"{int(keys[0]):#018x}"]


@pytest.mark.parametrize("servers,virtual", [(1, 1), (3, 2), (4, 16), (40, 2)])
def test_segments_and_slice_by_server_give_what_slice_cuts(servers, virtual):
    """Rings of few ranges cut by a loop over them, larger ones by numpy
    passes: both give slice()'s segments, grouped by owner."""
    ring = KeyRing(servers, virtual_servers=virtual, replication=min(1, servers - 1))
    for n in (0, 1, 7, 3000):
        keys = np.unique(hash_feature(np.arange(n, dtype=np.uint64), salt=n))
        if n == 7:
            keys[-1] = np.uint64(2**64 - 1)  # the last range's last key
        starts, ranges = ring.slice(keys)
        want: dict[int, list[tuple[int, int, int]]] = {}
        for j, r in enumerate(ranges.tolist()):
            want.setdefault(int(ring.owners[r]), []).append(
                (r, int(starts[j]), int(starts[j + 1])))
        assert ring.slice_by_server(keys) == want
        assert ring.segments(keys) == sorted(seg for segs in want.values() for seg in segs)
