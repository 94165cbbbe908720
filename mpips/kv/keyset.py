"""Registered key sets: a worker names a sorted key list once, then sends
each request as positions into it, and the servers look nothing up.

A server's cost for a key list it has not seen is a search per key (a random
probe into its sorted keys); for a list it has seen, a gather. Real jobs send
a new list per minibatch, but every minibatch of a data partition draws its
keys from the partition's key set. So a worker registers that set once
(:meth:`mpips.kv.KVWorker.register`), each server keeps its part of it with
the slots of those keys in its stores (resolved once, and again only after a
store inserted keys), and a request of a subset travels as positions into
the server's part (``FLAG_POSITIONS``): the server gathers the slots and
keys by position.

Registration stores the set's keys on the servers (at the handle's initial
value, which is what a pull of them reads anyway): register keys that will
be pushed, such as a training partition's, not a test set's.

Ring changes: a set is registered under a ring version. After a change the
worker sends requests of a set by keys until it registered the set again
under the new ring (on the set's next use), so a resend to a new owner, and
a new owner, never meet a set they do not hold. MPI keeps the order of the
messages between two ranks: a server always has a registration before the
requests that use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..keys import strictly_increasing

# A set's slots are 32-bit: half the bytes of a random gather (the cost of a
# request by position is one gather of its slots, then its rows), and one
# range's store of one server holds fewer than 2^31 rows.
SLOT_DTYPE = np.dtype(np.int32)
SLOT_MAX = np.iinfo(SLOT_DTYPE).max


class KeySet:
    """A sorted unique uint64 key list registered with the servers of one
    table (made by :meth:`mpips.kv.KVWorker.register`). ``subset(positions)``
    names some of its keys for a request."""

    def __init__(self, keys: np.ndarray, ident: int, table: str):
        self.keys = keys
        self.id = ident
        self.table = table
        # Set by the KVWorker when registered: the ring version, and per range
        # the position in ``keys`` of that range's first key minus its position
        # in its server's part (what to subtract to send server-local positions).
        self.ring_version = -1
        self.offsets = np.empty(0, dtype=np.int64)
        self.servers: set[int] = set()  # server ranks that hold a part

    def __len__(self) -> int:
        return self.keys.size

    @property
    def registered(self) -> bool:
        return self.ring_version >= 0

    def subset(self, positions: np.ndarray, keys: np.ndarray | None = None) -> KeySubset:
        """The keys at sorted unique ``positions`` (integers in [0, len)),
        for a push, pull or pushpull. Checked here, once. ``keys``: the
        caller's own array of those keys (checked equal), kept instead of a
        new one."""
        pos = np.asarray(positions)
        if pos.ndim != 1 or pos.dtype.kind not in "iu":
            raise ValueError(f"key set positions must be a 1-d integer array, got "
                             f"{pos.dtype} of shape {pos.shape}")
        if pos.dtype not in (np.int32, np.int64):  # int32 keeps half the bytes
            pos = pos.astype(np.int64)
        if pos.size and (pos[0] < 0 or pos[-1] >= self.keys.size):
            raise ValueError(f"key set positions must lie in [0, {self.keys.size}), got "
                             f"[{int(pos[0])}, {int(pos[-1])}]")
        if not strictly_increasing(pos):
            raise ValueError("key set positions must be sorted and unique")
        at = self.keys[pos]
        if keys is not None:
            if not np.array_equal(at, keys):
                raise ValueError("keys given with key set positions are not the set's "
                                 "keys at those positions")
            at = keys
        return KeySubset(self, pos, at)


@dataclass(frozen=True)
class KeySubset:
    """Some keys of a :class:`KeySet`, by position (``keys`` = ``keyset.keys[positions]``)."""

    keyset: KeySet
    positions: np.ndarray
    keys: np.ndarray

    @property
    def size(self) -> int:
        return self.positions.size


@dataclass
class _Part:
    """A server's part of one worker's key set: its keys in the ranges this
    server owns, and their slots in each range's store, resolved per range
    under that store's version."""

    keys: np.ndarray
    ranges: np.ndarray   # range of each piece, in key order
    bounds: np.ndarray   # piece j is keys[bounds[j]:bounds[j + 1]]
    slots: np.ndarray
    # range -> (store, its version, its main run's version) the range's
    # slots were resolved under
    resolved: dict[int, tuple[Any, int, int]] = field(default_factory=dict)


class KeySetError(ValueError):
    """A request named a key set this server does not hold (or positions outside it)."""


class ServerKeySets:
    """The key sets registered with one server, by (worker rank, table, id)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[int, int, int], _Part] = {}
        self.requests = 0  # requests served by position
        # the slots of a request go here (the server uses them at once): a new
        # array per request costs page faults once it is large. Gathered as
        # stored (32-bit), then widened to intp once: numpy converts narrower
        # indices on every gather and scatter that uses them, and a request's
        # slots serve two or more (the rows, each state, the write back).
        self._gathered = np.empty(0, dtype=SLOT_DTYPE)
        self._scratch = np.empty(0, dtype=np.intp)
        self.resolved_keys = 0  # keys looked up for sets (once per store change)
        self.registered = 0  # registrations received (a set registered again counts again)

    def __len__(self) -> int:
        return len(self._parts)

    @property
    def nbytes(self) -> int:
        return sum(p.keys.nbytes + p.slots.nbytes for p in self._parts.values())

    def register(self, sender: int, table: int, ident: int, keys: np.ndarray,
                 starts: np.ndarray, ranges: np.ndarray) -> None:
        """Keep ``keys`` (this server's part, sorted; ``ring.slice`` gave
        ``starts, ranges``) as set ``ident`` of ``sender``; it replaces an
        earlier registration of the same set."""
        self.registered += 1
        self._parts[(sender, table, ident)] = _Part(
            keys.copy(), ranges.astype(np.int64), starts.astype(np.int64),
            np.zeros(keys.size, dtype=SLOT_DTYPE))

    def drop(self, sender: int, table: int, ident: int) -> None:
        self._parts.pop((sender, table, ident), None)

    def drop_sender(self, sender: int) -> None:
        for key in [k for k in self._parts if k[0] == sender]:
            del self._parts[key]

    def _resolve(self, part: _Part, j: int, r: int, store: Any,
                 seen: tuple[Any, int, int] | None) -> None:
        """The slots of piece ``j`` (range ``r``) of ``part`` under ``store``'s
        current version. Where only the store's delta changed since they were
        resolved (other sets' keys inserted there), the keys in its main run
        kept their slots and only those in the delta are looked up again:
        with many workers per server every registration would otherwise
        make every other set look up all of its keys."""
        lo, hi = int(part.bounds[j]), int(part.bounds[j + 1])
        if seen is not None and seen[0] is store and seen[2] == store.main_version:
            version = store.version
            moved = lo + np.flatnonzero(part.slots[lo:hi] >= store.main_rows)
            part.slots[moved] = store.resolve(part.keys[moved])
            self.resolved_keys += moved.size
            if store.version == version:  # all there: nothing was inserted
                part.resolved[r] = (store, store.version, store.main_version)
                return
        if len(store) + (hi - lo) > SLOT_MAX:
            raise KeySetError(f"range {r} holds over {SLOT_MAX} keys: too many "
                              "for a key set's 32-bit slots")
        part.slots[lo:hi] = store.resolve(part.keys[lo:hi])
        # after: resolving may insert
        part.resolved[r] = (store, store.version, store.main_version)
        self.resolved_keys += hi - lo

    def translate(self, sender: int, table: int, ident: int, positions: np.ndarray,
                  stores: dict[tuple[int, int], Any]
                  ) -> tuple[list[tuple[int, int, int]], np.ndarray, Callable[[], np.ndarray]]:
        """A request's server-local ``positions`` into set ``ident``: its
        pieces ``(range, start, stop)`` (as ``KVServer`` cuts keys), the store
        slots of its keys (valid until the next call), and a function that
        gathers the keys themselves (only replication and held requests need
        them: a gather of random positions costs as much as the slots'). Ranges whose store changed
        since they were resolved are resolved again first. ``stores``:
        (table, range) -> store."""
        part = self._parts.get((sender, table, ident))
        if part is None:
            raise KeySetError(f"no key set {ident} of rank {sender} for table {table} "
                              "is registered here")
        pos = positions.view(np.int64)
        if pos.size and (pos[0] < 0 or pos[-1] >= part.keys.size):
            raise KeySetError(f"positions [{int(pos[0])}, {int(pos[-1])}] outside key set "
                              f"{ident} of rank {sender} ({part.keys.size} keys here)")
        self.requests += 1
        cuts = np.searchsorted(pos, part.bounds).tolist()
        pieces = []
        for j in range(len(cuts) - 1):
            a, b = cuts[j], cuts[j + 1]
            if a == b:
                continue
            r = int(part.ranges[j])
            store = stores.get((table, r))
            if store is None:
                raise KeySetError(f"key set {ident} of rank {sender}: range {r} is not "
                                  "owned by this server")
            seen = part.resolved.get(r)
            if seen is None or seen[0] is not store or seen[1] != store.version:
                self._resolve(part, j, r, store, seen)
            pieces.append((r, a, b))
        if self._scratch.size < pos.size:
            size = max(pos.size, 2 * self._scratch.size)
            self._gathered = np.empty(size, dtype=SLOT_DTYPE)
            self._scratch = np.empty(size, dtype=np.intp)
        slots = self._scratch[: pos.size]
        slots[...] = np.take(part.slots, pos, out=self._gathered[: pos.size])
        return pieces, slots, lambda: part.keys[pos]
