"""Server storage for one table: sorted key arrays plus value and state rows.

No Python object per key: keys, values (n, vdim) and each per-key state (an
optimizer accumulator) are one buffer each, holding a sorted main run and a
small sorted delta of the keys added since the last compaction (see
:class:`SortedStore`). Lookup is a search in each: the main run's through
its radix index (:mod:`mpips.kv.index`) once it is searched enough for the
index to pay, the delta's a ``searchsorted``; new keys of a
request are merged in at once, in place: the buffers keep spare rows
(address space the OS backs only when written), and stored rows move right
chunk by chunk, so no buffer of the store's size is allocated per insert
(fresh memory costs page faults). A request whose keys are a contiguous run
of stored keys (the common case once a model's key set has settled on a
server) takes views instead of gathers, and the handle updates the rows in
place. A request that repeats the previous key list of the same requester
(the same minibatch keys pushed again, a benchmark) reuses the slots found
last time: one array comparison instead of a search.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from ..handles import Handle
from .index import RadixIndex

# Slots kept for repeated key lists, per store, at least (8 bytes each, plus
# the keys of lists not named by a signature); a store of more keys keeps as
# many slots as it has keys.
SLOT_CACHE_ENTRIES = 1 << 23


# search_sorted: queries are grouped by blocks of this many stored keys once
# they are many (at least SEARCH_GROUP_QUERIES per block).
SEARCH_BLOCK = 1 << 16
SEARCH_GROUP_QUERIES = 16


def search_sorted(stored: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``np.searchsorted(stored, queries)`` for sorted ``queries``, faster on
    large arrays: numpy searches each query over all of what is left of
    ``stored``, so most of its probes miss the cache once ``stored`` is
    larger than it. Many queries are grouped by the block of 2^16 stored
    keys (512 KiB) they fall in, and each group is searched in its block
    alone, which stays in cache (docs/performance.md, Storage)."""
    n = stored.size
    blocks = -(-n // SEARCH_BLOCK)
    if blocks < 2 or queries.size < SEARCH_GROUP_QUERIES * blocks:
        return np.searchsorted(stored, queries)
    cuts = np.empty(blocks + 1, dtype=np.intp)
    cuts[0], cuts[-1] = 0, queries.size
    # queries[cuts[b]:cuts[b + 1]] are at least stored[b * BLOCK] (b > 0) and
    # below stored[(b + 1) * BLOCK]: their positions lie in that block
    cuts[1:-1] = np.searchsorted(queries, stored[SEARCH_BLOCK::SEARCH_BLOCK])
    out = np.empty(queries.size, dtype=np.intp)
    for b in np.flatnonzero(cuts[1:] > cuts[:-1]).tolist():
        lo, i, j = b * SEARCH_BLOCK, cuts[b], cuts[b + 1]
        out[i:j] = np.searchsorted(stored[lo: lo + SEARCH_BLOCK], queries[i:j])
        out[i:j] += lo
    return out


@dataclass(frozen=True)
class Signed:
    """A requester's key list named by the key-cache filter's 64-bit signature:
    its cached slots are trusted without comparing the keys."""

    sender: int
    signature: int


@dataclass(frozen=True)
class _Previous:
    """The slot cache's key for a requester's list before last."""

    who: Hashable


# Rows moved per step of an in-place merge: a chunk and its scratch copy stay
# in the L2 cache.
MERGE_CHUNK = 1 << 15


def _rows_1d(arr: np.ndarray) -> np.ndarray:
    """A contiguous (n, vdim) array as n opaque rows: numpy moves 1-d rows by
    index with far less overhead than 2-d ones. Rows of 1, 2, 4 or 8 bytes
    move as unsigned integers."""
    if arr.ndim == 1:
        return arr
    size = arr.shape[1] * arr.itemsize
    row = np.dtype(f"u{size}") if size in (1, 2, 4, 8) else np.dtype((np.void, size))
    return arr.view(row).reshape(-1)


def _scatter(arr: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> None:
    """``arr[pos] = rows`` for row arrays, through 1-d row views."""
    _rows_1d(arr)[pos] = _rows_1d(np.ascontiguousarray(rows, dtype=arr.dtype))


def merge_in_place(bufs: list[np.ndarray], n: int, new_pos: np.ndarray,
                   fills: list) -> None:
    """Insert ``new_pos.size`` rows into the first ``n`` rows of each buffer
    (1-d row views with room for them), in place.

    ``new_pos`` (sorted) gives, for each new row, the number of old rows
    before it; ``fills[i]`` is buffer i's new rows (an array, or a scalar for
    all). The old rows move right, chunk by chunk from the end: a chunk's
    destination starts at or after its source and ends before the next
    chunk's destination, so nothing is overwritten before it moved. No
    buffer of the store's size is allocated: fresh memory costs page faults
    that, on a VM, cost more than the copy (measured by ``bench store``).
    """
    m = new_pos.size
    if m == 0:
        return
    if n == 0:
        for buf, fill in zip(bufs, fills, strict=True):
            buf[:m] = fill
        return
    new_at = new_pos + np.arange(m)  # final slot of each new row
    bounds = np.append(np.arange(0, n, MERGE_CHUNK), n)
    before = np.searchsorted(new_pos, bounds, side="left")  # new rows before each bound
    before[-1] = m  # new rows past the last old row belong to the last chunk
    scratch: list[np.ndarray | None] = [None] * len(bufs)
    for j in range(bounds.size - 2, -1, -1):
        if before[j + 1] == 0:
            return  # nothing lands before this chunk's end: it stays, and so do all before
        s, e = int(bounds[j]), int(bounds[j + 1])
        lo, hi = int(before[j]), int(before[j + 1])
        a, b = s + lo, e + hi
        local = new_at[lo:hi] - a
        old_at = None  # where the old rows go in the destination (None: all in a row)
        if hi > lo:
            keep = np.ones(b - a, dtype=bool)
            keep[local] = False
            # integer positions, computed once for every buffer: an integer
            # scatter is cheaper than a boolean one
            old_at = np.flatnonzero(keep)
        for i, (buf, fill) in enumerate(zip(bufs, fills, strict=True)):
            if scratch[i] is None:
                scratch[i] = np.empty(MERGE_CHUNK, dtype=buf.dtype)
            tmp = scratch[i][: e - s]
            tmp[...] = buf[s:e]
            dst = buf[a:b]
            if old_at is None:
                dst[...] = tmp
            else:
                dst[old_at] = tmp
                dst[local] = fill[lo:hi] if isinstance(fill, np.ndarray) else fill


# A main run gets its radix index (kv/index.py) once keys searched in it
# since it last changed reach this fraction of it.
INDEX_AFTER = 0.25

# The delta (new keys since the last compaction) is merged into the main run
# when it holds more than max(DELTA_MIN, main / DELTA_FRACTION) rows.
DELTA_MIN = 1 << 16
DELTA_FRACTION = 8


class SortedStore:
    """Keys, values and per-key state of one table on one server.

    Rows live in one buffer per array (keys, values, each state), laid out as
    a sorted main run followed by a sorted delta of keys added since the last
    compaction. A slot (a row index) means the same row in every buffer.
    New keys are merged into the small delta (O(delta) per insert, not
    O(store)), and the delta into the main run once it outgrows its share: an
    insert into a store of 1e8 keys moves a few million rows, not 1e8. The
    public ``keys``, ``values`` and ``state`` compact first and are views of
    the main run.
    """

    def __init__(self, vdim: int, dtype: np.dtype | str, handle: Handle):
        self.vdim = vdim
        self.dtype = np.dtype(dtype)
        self.handle = handle
        self._kbuf = np.empty(0, dtype=np.uint64)
        self._vbuf = np.empty((0, vdim), dtype=self.dtype)
        self._sbuf = {name: np.empty((0, vdim), dtype=self.dtype) for name in handle.state}
        self._main = 0    # rows of the main run: slots [0, main)
        self._delta = 0   # rows of the delta: slots [main, main + delta)
        self.version = 0  # bumped by every insert: cached slots are then stale
        # bumped when the main run's rows move (a merge into it): until then
        # an insert into the delta leaves every main-run slot where it was
        self.main_version = 0
        self.compactions = 0
        # Slots of recent key lists, least recently used first. By requester
        # (a rank, or (rank, chunk): its last list, checked against the keys)
        # or by Signed(rank, signature) for a key list the key-cache filter
        # names (trusted: a 64-bit signature).
        self._slots: OrderedDict[Hashable, tuple[np.ndarray | None, np.ndarray, int]] = \
            OrderedDict()
        self._slot_entries = 0
        self.slot_cache_hits = 0
        # The main run's radix index, built once the keys searched in it since
        # it last changed reach INDEX_AFTER of its size (the build costs about
        # one search of a quarter of the run: it pays once that many came).
        self._index: RadixIndex | None = None
        self._searched_since_change = 0

    def __len__(self) -> int:
        return self._main + self._delta

    @property
    def main_rows(self) -> int:
        """Rows of the main run: slots below this stay put while
        ``main_version`` does."""
        return self._main

    # ---- whole-store views (compacted) ------------------------------------------
    @property
    def keys(self) -> np.ndarray:
        self.compact()
        return self._kbuf[: self._main]

    @property
    def values(self) -> np.ndarray:
        self.compact()
        return self._vbuf[: self._main]

    @property
    def state(self) -> dict[str, np.ndarray]:
        self.compact()
        return {name: buf[: self._main] for name, buf in self._sbuf.items()}

    @property
    def row_bytes(self) -> int:
        return 8 + self.dtype.itemsize * self.vdim * (1 + len(self._sbuf))

    @property
    def nbytes(self) -> int:
        """Bytes of memory the stored rows take. The buffers' spare rows are
        reserved address space that nothing writes, so the OS gives them no
        memory (``bench store`` checks this against the process's RSS)."""
        return len(self) * self.row_bytes

    @property
    def reserved_bytes(self) -> int:
        """Address space of the buffers, spare rows included."""
        return self._kbuf.shape[0] * self.row_bytes

    def bytes_per_key(self) -> float:
        return self.nbytes / max(1, len(self))

    # ---- buffers ---------------------------------------------------------------------
    def _row_bufs(self) -> list[np.ndarray]:
        """Every buffer as 1-d rows: keys, values, states."""
        return [self._kbuf, _rows_1d(self._vbuf), *(_rows_1d(b) for b in self._sbuf.values())]

    def _reserve(self, total: int) -> None:
        """Room for ``total`` rows in every buffer. Growing moves the rows to
        buffers twice as large as needed: spare rows cost address space, not
        memory (pages nobody touched are not backed), and growth stays rare."""
        if total <= self._kbuf.shape[0]:
            return
        n = len(self)
        cap = max(2 * total, 1024)

        def grow(buf: np.ndarray) -> np.ndarray:
            out = np.empty((cap, *buf.shape[1:]), dtype=buf.dtype)
            out[:n] = buf[:n]
            return out

        self._kbuf, self._vbuf = grow(self._kbuf), grow(self._vbuf)
        self._sbuf = {name: grow(b) for name, b in self._sbuf.items()}

    def _init_fills(self) -> list:
        """What new rows hold, as the 1-d row views see them: the key buffer's
        fill comes from the caller; values start at ``handle.init``, state at 0."""
        fills = []
        for i in range(1 + len(self._sbuf)):
            row = np.full((1, self.vdim), self.handle.init if i == 0 else 0, dtype=self.dtype)
            fills.append(_rows_1d(row)[0])
        return fills

    def compact(self) -> None:
        """Merge the delta into the main run (in place)."""
        if self._delta:
            self._merge_delta(np.empty(0, np.uint64), np.empty(0, np.intp))

    def _merge_delta(self, new_keys: np.ndarray, new_main_pos: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Merge the delta and ``new_keys`` (not stored; ``new_main_pos``: where
        each goes in the main run) into the main run, in one pass over it.
        Returns the union of both, sorted, and the main-run positions of its
        keys before the merge."""
        main, delta = self._main, self._delta
        bufs = self._row_bufs()
        dkeys = self._kbuf[main: main + delta]
        dpos = self._search_main(dkeys)
        m = new_keys.size
        rows = [b[main: main + delta] for b in bufs[1:]]
        if m:  # the union of two disjoint sorted runs, rows alongside
            order = np.argsort(np.concatenate([dkeys, new_keys]), kind="stable")
            keys = np.concatenate([dkeys, new_keys])[order]
            upos = np.concatenate([dpos, new_main_pos])[order]
            rows = [np.concatenate([r, np.full(m, fill, dtype=r.dtype)])[order]
                    for r, fill in zip(rows, self._init_fills(), strict=True)]
        else:
            keys, upos = dkeys.copy(), dpos
            rows = [r.copy() for r in rows]  # out of the way of the merge
        merge_in_place(bufs, main, upos, [keys, *rows])
        self._main_changed()
        self._main, self._delta = main + delta + m, 0
        self.version += 1
        self.compactions += 1
        return keys, upos

    def _delta_limit(self) -> int:
        return max(DELTA_MIN, self._main // DELTA_FRACTION)

    def _add(self, keys: np.ndarray, located: tuple[np.ndarray, np.ndarray, np.ndarray]
             ) -> np.ndarray:
        """Insert the keys of sorted ``keys`` not found (``located``: slots,
        found and main-run positions from :meth:`_locate`) with initial values;
        return the slots of all ``keys``. Three ways, each one pass:

        * the delta is empty, and the new keys are many (more than half the
          delta's limit: a bulk load, where a pass over the main run costs
          less than passing them through the delta) or sort after every
          stored key: straight into the main run;
        * they fit in the delta: into the delta (O(delta), the main run stays);
        * else the delta and the new keys go into the main run together.
        """
        pos, found, main_pos = located
        self.version += 1
        missing = ~found
        all_new = not found.any()  # a first epoch, a bulk load: no selection copies
        new_keys = keys if all_new else keys[missing]
        new_main_pos = main_pos if all_new else main_pos[missing]
        m = new_keys.size
        self._reserve(len(self) + m)
        main, delta = self._main, self._delta
        limit = self._delta_limit()
        many = 2 * m > limit
        if not delta and (many or not main or new_keys[0] > self._kbuf[main - 1]):
            # a missing key goes where ``main_pos`` says; every key's slot moves
            # by the number of new keys before it
            merge_in_place(self._row_bufs(), main, new_main_pos,
                           [new_keys, *self._init_fills()])
            self._main_changed()
            self._main += m
            return main_pos + (np.arange(m) if all_new else np.cumsum(missing) - missing)
        if not many and delta + m <= limit:
            dkeys = self._kbuf[main: main + delta]
            merge_in_place([b[main:] for b in self._row_bufs()], delta,
                           search_sorted(dkeys, new_keys), [new_keys, *self._init_fills()])
            self._delta += m
            # main rows did not move; the delta's did, and it is small: search it
            in_delta = np.flatnonzero(missing | (pos >= main))
            slots = pos.copy()
            slots[in_delta] = main + search_sorted(
                self._kbuf[main: main + self._delta], keys[in_delta])
            return slots
        union, upos = self._merge_delta(new_keys, new_main_pos)
        # a key of the old main run moves by the union rows merged before it;
        # a union key lands at its main position plus its rank in the union
        in_union = missing | (pos >= main)
        slots = np.empty(keys.size, dtype=np.intp)
        old = pos[~in_union]
        slots[~in_union] = old + np.searchsorted(upos, old, side="right")
        rank = np.searchsorted(union, keys[in_union])
        slots[in_union] = upos[rank] + rank
        return slots

    # ---- lookup --------------------------------------------------------------
    def _main_changed(self) -> None:
        self.main_version += 1
        self._index = None
        self._searched_since_change = 0

    def _search_main(self, keys: np.ndarray) -> np.ndarray:
        """``np.searchsorted`` of sorted ``keys`` in the main run: through its
        radix index where it has one, else by :func:`search_sorted` (and the
        index built once enough keys were searched for it to pay)."""
        stored = self._kbuf[: self._main]
        if self._index is None and stored.size >= 1024:
            self._searched_since_change += keys.size
            if self._searched_since_change >= INDEX_AFTER * stored.size:
                self._index = RadixIndex.build(stored)
                # uneven keys (no index): do not try again before the next change
                self._searched_since_change = -(1 << 62) if self._index is None else 0
        if self._index is not None:
            return self._index.search(stored, keys)
        return search_sorted(stored, keys)

    def _run(self, keys: np.ndarray) -> slice | None:
        """The slots of ``keys`` if they are a contiguous run of stored rows."""
        for lo, hi in ((0, self._main), (self._main, self._main + self._delta)):
            stored = self._kbuf[lo:hi]
            start = int(np.searchsorted(stored, keys[0]))
            stop = start + keys.size
            if stop <= stored.size and stored[stop - 1] == keys[-1] \
                    and np.array_equal(stored[start:stop], keys):
                return slice(lo + start, lo + stop)
        return None

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of ``keys`` and a mask of which are stored (slots of keys not
        stored are meaningless)."""
        slots, found, _ = self._locate(keys)
        return slots, found

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slots, found mask, and each key's position in the main run."""
        main, delta = self._main, self._delta
        stored = self._kbuf[:main]
        main_pos = self._search_main(keys)
        found = np.take(stored, main_pos, mode="clip") == keys if main else \
            np.zeros(keys.size, dtype=bool)
        slots = main_pos
        if delta:
            rest = np.flatnonzero(~found)
            if rest.size:
                dkeys = self._kbuf[main: main + delta]
                dpos = search_sorted(dkeys, keys[rest])
                slots = main_pos.copy()
                slots[rest] = main + dpos
                found[rest] = np.take(dkeys, dpos, mode="clip") == keys[rest]
        return slots, found, main_pos

    def _slots_of(self, keys: np.ndarray) -> np.ndarray:
        """Slots of ``keys``, inserting those not stored yet."""
        located = self._locate(keys)
        return located[0] if located[1].all() else self._add(keys, located)

    def _cached_slots(self, keys: np.ndarray, who: Hashable) -> np.ndarray | None:
        """Slots of a key list this requester sent before: its last list, or
        the one before (a worker that pulls the next minibatch's weights
        before it pushes this one's gradient repeats the list before last)."""
        for entry in (who, _Previous(who)) if not isinstance(who, Signed) else (who,):
            hit = self._slots.get(entry)
            if hit is None or hit[2] != self.version or hit[1].size != keys.size:
                continue
            if hit[0] is not None and not (hit[0][0] == keys[0] and hit[0][-1] == keys[-1]
                                           and np.array_equal(hit[0], keys)):
                continue
            self._slots.move_to_end(entry)
            self.slot_cache_hits += 1
            return hit[1]
        return None

    def _remember(self, who: Hashable, keys: np.ndarray, pos: np.ndarray) -> None:
        """Keep the slots of a key list, within max(SLOT_CACHE_ENTRIES, keys
        stored) slots in all: a store can remember a repeated list of any
        size it holds."""
        signed = isinstance(who, Signed)
        old = self._slots.pop(who, None)
        if old is not None and not signed:
            # the requester's last list becomes its list before last
            gone = self._slots.pop(_Previous(who), None)
            if gone is not None:
                self._slot_entries -= gone[1].size
            self._slots[_Previous(who)] = old
        elif old is not None:
            self._slot_entries -= old[1].size
        self._slots[who] = (None if signed else keys.copy(), pos, self.version)
        self._slot_entries += pos.size
        budget = max(SLOT_CACHE_ENTRIES, len(self))
        while self._slot_entries > budget and len(self._slots) > 1:
            _, dropped = self._slots.popitem(last=False)
            self._slot_entries -= dropped[1].size

    # ---- requests ------------------------------------------------------------
    def push(self, keys: np.ndarray, pushed: np.ndarray, sender: Hashable = -1) -> None:
        """Apply the handle to ``keys``' rows; new keys start at ``handle.init``.
        ``sender`` names the requester for the slot cache: any hashable, such
        as its rank or (rank, chunk) (its last key list is remembered and
        compared), or ``Signed(rank, signature)`` for a key list the key-cache
        filter named (trusted)."""
        self._update(keys, pushed, sender)

    def pull(self, keys: np.ndarray, out: np.ndarray | None = None,
             sender: Hashable = -1) -> np.ndarray:
        """Rows of ``keys``; keys never pushed read as ``handle.init``."""
        if out is None:
            out = np.empty((keys.size, self.vdim), dtype=self.dtype)
        if keys.size == 0:
            return out
        run = self._run(keys)
        if run is not None:
            out[...] = self._vbuf[run]
            return out
        pos = self._cached_slots(keys, sender)
        if pos is None:
            pos, found = self.locate(keys)
            if not found.all():
                out[...] = self.handle.init
                out[found] = self._vbuf[pos[found]]
                return out
            self._remember(sender, keys, pos)
        # mode="clip": with the default mode and ``out``, numpy buffers the
        # result (a second copy); slots are valid
        return np.take(self._vbuf, pos, axis=0, out=out, mode="clip")

    def pushpull(self, keys: np.ndarray, pushed: np.ndarray, sender: Hashable = -1) -> np.ndarray:
        """Push, then return the updated rows: one lookup serves both."""
        return self._update(keys, pushed, sender, want_rows=True)

    def _update(self, keys: np.ndarray, pushed: np.ndarray, sender: Hashable,
                want_rows: bool = False) -> np.ndarray | None:
        if keys.size == 0:
            return np.empty((0, self.vdim), dtype=self.dtype) if want_rows else None
        pushed = self._rows(pushed, keys.size)
        main = self._main
        if not self._delta and (not main or keys[0] > self._kbuf[main - 1]):
            # all new, past the last key (a bulk load in key order): no search
            at_end = np.full(keys.size, main, dtype=np.intp)
            self._add(keys, (at_end, np.zeros(keys.size, dtype=bool), at_end))
        run = self._run(keys)
        pos = None if run is not None else self._cached_slots(keys, sender)
        if run is None and pos is None:
            located = self._locate(keys)
            pos = located[0]
            if not located[1].all():
                pos = self._add(keys, located)
                run = self._run(keys)
            if run is None:
                self._remember(sender, keys, pos)
        if run is not None:
            # A contiguous run: the handle updates the stored rows in place.
            self.handle(self._vbuf[run], pushed, {n: b[run] for n, b in self._sbuf.items()})
            return self._vbuf[run].copy() if want_rows else None
        return self._apply_at(pos, pushed, want_rows)

    def _apply_at(self, pos: np.ndarray, pushed: np.ndarray, want_rows: bool
                  ) -> np.ndarray | None:
        rows = np.take(self._vbuf, pos, axis=0)
        state = {n: np.take(b, pos, axis=0) for n, b in self._sbuf.items()}
        self.handle(rows, pushed, state)
        _scatter(self._vbuf, pos, rows)
        for n, st in state.items():
            _scatter(self._sbuf[n], pos, st)
        return rows if want_rows else None

    # ---- requests by slots (registered key sets) -----------------------------------
    def resolve(self, keys: np.ndarray) -> np.ndarray:
        """Slots of sorted unique ``keys``, storing those not stored yet at
        ``handle.init`` (what a pull of them reads anyway). The slots stay
        valid while ``version`` does: every insert changes it. A key set the
        server registered is resolved once per change, and its requests then
        name rows by slot (:meth:`pull_at`, :meth:`update_at`): no search."""
        if keys.size == 0:
            return np.empty(0, dtype=np.intp)
        return self._slots_of(keys)

    def pull_at(self, slots: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``slots`` (from :meth:`resolve` under the current version)."""
        if out is None:
            out = np.empty((slots.size, self.vdim), dtype=self.dtype)
        return np.take(self._vbuf, slots, axis=0, out=out, mode="clip")

    def update_at(self, slots: np.ndarray, pushed: np.ndarray,
                  want_rows: bool = False) -> np.ndarray | None:
        """Apply the handle to the rows at ``slots`` (from :meth:`resolve` under
        the current version); with ``want_rows``, return the updated rows."""
        if slots.size == 0:
            return np.empty((0, self.vdim), dtype=self.dtype) if want_rows else None
        return self._apply_at(slots, self._rows(pushed, slots.size), want_rows)

    # ---- replication -------------------------------------------------------------
    def rows_with_state(self, keys: np.ndarray) -> np.ndarray:
        """Values and state of stored ``keys`` side by side, (n, vdim * (1 + states)):
        what an owner sends its replicas."""
        return self.rows_with_state_at(self.locate(keys)[0])

    def rows_with_state_at(self, slots: np.ndarray) -> np.ndarray:
        """:meth:`rows_with_state` of the rows at ``slots``."""
        cols = [np.take(self._vbuf, slots, axis=0),
                *(np.take(b, slots, axis=0) for b in self._sbuf.values())]
        return cols[0] if len(cols) == 1 else np.concatenate(cols, axis=1)

    def assign_rows(self, keys: np.ndarray, rows: np.ndarray | None) -> None:
        """Set values and state of ``keys`` from ``rows_with_state`` output."""
        if keys.size == 0:
            return
        pos = self._slots_of(keys)
        rows = rows.reshape(keys.size, -1)
        v = self.vdim
        _scatter(self._vbuf, pos, rows[:, :v])
        for i, b in enumerate(self._sbuf.values()):
            _scatter(b, pos, rows[:, v * (i + 1): v * (i + 2)])

    def _rows(self, pushed: np.ndarray, n: int) -> np.ndarray:
        pushed = np.asarray(pushed)
        if pushed.size != n * self.vdim:
            raise ValueError(f"{pushed.size} values for {n} keys of vdim {self.vdim}")
        return pushed.reshape(n, self.vdim).astype(self.dtype, copy=False)


def huge_pages_off() -> None:
    """Ask NumPy not to request transparent huge pages (it does for arrays of
    4 MB and more) unless NUMPY_MADVISE_HUGEPAGE is set: on virtual machines
    their page faults cost stores more than the TLB saves (measured in
    docs/performance.md, Storage)."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    try:
        from numpy._core import multiarray
        multiarray._set_madvise_hugepage(False)
    except (ImportError, AttributeError):  # another NumPy: leave it be
        pass
