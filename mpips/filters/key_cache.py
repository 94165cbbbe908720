"""Key caching: a repeated key list travels as its 64-bit signature.

The sender and the receiver each keep, per (peer, table), the signatures of
the key lists recently sent, in LRU order under the same byte budget (8 bytes
per key of each list). The sender keeps only signature -> count; the receiver
keeps the keys. Both apply the same operations in the same order (MPI keeps
the order of the messages between two ranks, and the receiver replays what
the header flags say the sender did), so their caches stay identical: when
the sender has a signature, so does the receiver, and a hit never misses.

Ring changes: each cache is tagged with the ring version it was filled
under. The sender clears a peer's cache when it sends under a newer version
(and on ``po.ring_listeners``), so the first message after a failover, and
every resend to a new owner, carries full keys. The receiver clears a peer's
cache when that peer's first message of a newer version arrives, not when its
own ring changes: messages the peer sent before the change may still be in
flight and must still find their lists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .base import FilterStats


class _LRU:
    """signature -> entry, bounded by the sum of entry sizes (bytes)."""

    def __init__(self, budget: int, on_evict: Callable[[int], None] | None = None):
        self.budget = budget
        self.entries: OrderedDict[int, tuple[int, object]] = OrderedDict()
        self.used = 0
        self.version = -1
        self.on_evict = on_evict

    def get(self, sig: int) -> object | None:
        entry = self.entries.get(sig)
        if entry is None:
            return None
        self.entries.move_to_end(sig)
        return entry[1]

    def put(self, sig: int, size: int, value: object) -> int:
        """Store; returns how many entries were evicted. Lists larger than the
        budget are not stored (both ends decide alike)."""
        old = self.entries.pop(sig, None)
        if old is not None:
            self.used -= old[0]
        evicted = 0
        if size > self.budget:
            return evicted
        while self.used + size > self.budget and self.entries:
            gone, (gone_size, _) = self.entries.popitem(last=False)
            self.used -= gone_size
            evicted += 1
            if self.on_evict is not None:
                self.on_evict(gone)
        self.entries[sig] = (size, value)
        self.used += size
        return evicted

    def clear(self, version: int) -> None:
        if self.on_evict is not None:
            for sig in self.entries:
                self.on_evict(sig)
        self.entries.clear()
        self.used = 0
        self.version = version


def fits(nkeys: int, budget: int) -> bool:
    return 8 * nkeys <= budget


class SenderKeyCache:
    """The sender's side: which lists each peer holds, by signature."""

    def __init__(self, budget: int, stats: FilterStats):
        self.budget = budget
        self.stats = stats
        self.peers: dict[tuple[int, int], _LRU] = {}

    def lookup(self, peer: int, table: int, sig: int, nkeys: int, version: int) -> bool:
        """True if ``peer`` holds the list (send the signature only). Otherwise
        the list is recorded as sent in full: the receiver will store it."""
        lru = self.peers.get((peer, table))
        if lru is None:
            lru = self.peers[(peer, table)] = _LRU(self.budget)
        if lru.version != version:
            lru.clear(version)
        if lru.get(sig) is not None:
            self.stats.hits += 1
            return True
        self.stats.misses += 1
        self.stats.evictions += lru.put(sig, 8 * nkeys, nkeys)
        return False

    def clear(self) -> None:
        """A ring change: every peer's lists are forgotten."""
        self.peers.clear()


class ReceiverKeyCache:
    """The receiver's side: the key lists themselves, per (peer, table)."""

    def __init__(self, budget: int, stats: FilterStats,
                 on_evict: Callable[[int, int, int], None] | None = None):
        self.budget = budget
        self.stats = stats
        self.peers: dict[tuple[int, int], _LRU] = {}
        self.on_evict = on_evict  # (peer, table, signature): drop cached slots

    def _lru(self, peer: int, table: int, version: int) -> _LRU:
        lru = self.peers.get((peer, table))
        if lru is None:
            hook = None
            if self.on_evict is not None:
                on_evict = self.on_evict

                def hook(sig: int) -> None:
                    on_evict(peer, table, sig)
            lru = self.peers[(peer, table)] = _LRU(self.budget, hook)
        if version > lru.version:
            lru.clear(version)
        return lru

    def store(self, peer: int, table: int, sig: int, keys: np.ndarray, version: int) -> None:
        lru = self._lru(peer, table, version)
        self.stats.evictions += lru.put(sig, 8 * keys.size, keys.copy())

    def fetch(self, peer: int, table: int, sig: int, nkeys: int, version: int) -> np.ndarray:
        keys = self._lru(peer, table, version).get(sig)
        if keys is None or keys.size != nkeys:
            raise ValueError(f"key cache: no list with signature {sig:#018x} ({nkeys} keys) "
                             f"from rank {peer} for table {table} under ring version "
                             f"{version}: sender and receiver caches disagree")
        self.stats.hits += 1
        return keys

    def drop_peer(self, peer: int) -> None:
        for key in [k for k in self.peers if k[0] == peer]:
            self.peers.pop(key).clear(-1)
