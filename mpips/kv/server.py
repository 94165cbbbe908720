"""KVServer: holds the ranges this rank owns (and replicas of its
predecessors' ranges) and answers push, pull and pushpull requests.

Storage is one store per (table, range), so that a range moves between
primary and replica roles as a unit: when the owner of a range dies, its
first live successor already holds a replica and promotes it in place
(failover is a status change, not a data transfer).

Replication (k > 0): the owner applies an update, forwards the updated rows
(values and optimizer state) of each range to the range's k replicas, and
answers the worker only when every replica acknowledged: an acknowledged push
is never lost. Every store remembers which (worker, timestamp) requests it
applied, so a request a worker resends after a failover is not applied twice.
After a ring change, each owner copies whole ranges to replicas that lack
them (repair) until every range has k copies again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..filters import ServerFilters
from ..keys import strictly_increasing
from ..postoffice import Postoffice
from ..ring import KeyRing
from ..transport import Message, Op
from ..transport.message import FLAG_KEYS_CHECKED, FLAG_POSITIONS
from .aggregate import SyncAggregator
from .keyset import ServerKeySets
from .store import Signed, SortedStore

RECENT_REQUESTS = 4096  # per worker and range: how far back duplicates are caught
CHUNK_IDS = 1 << 24  # chunks a request may have, in the ids of applied requests


def request_id(ts: int, chunk: int) -> int:
    """What a range remembers of an applied message: its request and chunk."""
    return ts * CHUNK_IDS + chunk


class RecentRequests:
    """The (worker, timestamp) pairs of requests a range has applied, bounded."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[deque[int], set[int]]] = {}

    def add(self, sender: int, ts: int) -> None:
        order, seen = self._seen.setdefault(sender, (deque(), set()))
        order.append(ts)
        seen.add(ts)
        if len(order) > RECENT_REQUESTS:
            seen.discard(order.popleft())

    def __contains__(self, item: tuple[int, int]) -> bool:
        entry = self._seen.get(item[0])
        return entry is not None and item[1] in entry[1]

    def to_list(self) -> list[list[int]]:
        return [[s, t] for s, (order, _) in self._seen.items() for t in order]

    @classmethod
    def from_list(cls, pairs: list[list[int]]) -> RecentRequests:
        out = cls()
        for s, t in pairs:
            out.add(s, t)
        return out


@dataclass
class _AwaitReplicas:
    """A reply held back until the replicas acknowledged the update."""

    id: int
    reply_to: int
    reply: Message
    waiting: set[tuple[int, int]] = field(default_factory=set)  # (replica rank, range)


class KVServer:
    """Serves requests for all tables of the job on one server rank."""

    def __init__(self, po: Postoffice):
        self.po = po
        self.server = po.layout.servers.index(po.rank)
        self.tables = po.tables
        ring = po.ring
        # (table, range) -> store
        self.primary: dict[tuple[int, int], Any] = {}
        self.replica: dict[tuple[int, int], Any] = {}
        self.applied: dict[int, RecentRequests] = {}  # range -> requests applied
        for r in ring.ranges_of_server(self.server):
            self._add_ranges(self.primary, r)
        for r in range(ring.num_ranges):
            if self.server in ring.replicas(r):
                self._add_ranges(self.replica, r)
        self.deferred: list[Message] = []
        self.awaiting: dict[int, _AwaitReplicas] = {}
        self.snapshots_out: set[tuple[int, int, int]] = set()  # (rank, table, range)
        self._next_repl = 0
        self._promoted_version = -1  # ring version under which ranges were promoted
        self.requests = 0
        self.keys_served = 0
        self.busy_seconds = 0.0  # in handle(): the job's end reports it against idle time
        self.resumed = False  # a checkpoint's ranges are loaded (RESUME)
        self.filters = ServerFilters(po)
        po.add_stats(("server",), self.filters.stats)
        # consistency: aggregated pushes of a task, pulls that wait for them
        self.aggregator = SyncAggregator(self)
        self.keysets = ServerKeySets()  # workers' registered key sets (kv/keyset.py)
        for op in (Op.PUSH, Op.PULL, Op.PUSHPULL):
            po.on(op, self.handle)
        po.on(Op.KEYSET, self._keyset_in)
        po.on(Op.KEYSET_DROP, self._keyset_in)
        po.on(Op.REPL, self._replicate_in)
        po.on(Op.REPL_ACK, self._replica_ack)
        po.on(Op.SNAPSHOT, self._snapshot_in)
        po.on(Op.SNAPSHOT_ACK, self._snapshot_ack)
        po.on(Op.CHECKPOINT, self._checkpoint)
        # checkpoint files being written: (thread, its outcome, reply to, id)
        self._writing: list[tuple[threading.Thread, dict[str, Any], int, int]] = []
        po.on_idle(self._report_written)
        po.on(Op.RESUME, self._resume)
        po.ring_listeners.append(self.on_ring_change)
        po.failure_listeners.append(self._peer_gone)

    # ---- stores ----------------------------------------------------------------
    def _new_store(self, t: int) -> Any:
        table = self.tables[t]
        if table.store is not None:
            return table.store(table)
        return SortedStore(table.vdim, table.np_dtype, table.handle)

    def _add_ranges(self, where: dict, r: int) -> None:
        for t in range(len(self.tables)):
            where[(t, r)] = self._new_store(t)
        self.applied.setdefault(r, RecentRequests())

    def ranges(self, table: str) -> list[tuple[int, Any]]:
        """(range, store) of the ranges of ``table`` this server owns now
        (after failovers too), in key order."""
        t = self.po.table_ids[table]
        return [(k[1], self.primary[k]) for k in sorted(self.primary) if k[0] == t]

    def stores(self, table: str) -> list[Any]:
        """This server's primary stores of ``table``, in key order."""
        return [store for _, store in self.ranges(table)]

    def items(self, table: str, ranges: set[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """All (keys, values, state) of ``table`` this server owns (of
        ``ranges`` only, if given), by key."""
        stores = [s for r, s in self.ranges(table) if len(s) and (ranges is None or r in ranges)]
        t = self.tables[self.po.table_ids[table]]
        if not stores:
            return (np.empty(0, np.uint64), np.empty((0, t.vdim), t.np_dtype),
                    {n: np.empty((0, t.vdim), t.np_dtype) for n in t.handle.state})
        return (np.concatenate([s.keys for s in stores]),
                np.concatenate([s.values for s in stores]),
                {n: np.concatenate([s.state[n] for s in stores]) for n in t.handle.state})

    def load(self, table: str, keys: np.ndarray, values: np.ndarray,
             state: dict[str, np.ndarray]) -> int:
        """Set the rows of ``table`` for the sorted ``keys`` that fall in this
        server's ranges (as owner and as replica): a model to start from.
        State arrays the handle has and ``state`` lacks start at 0. Returns
        the keys loaded as owner."""
        t = self.po.table_ids[table]
        vdim = self.tables[t].vdim
        loaded = 0
        for where in (self.primary, self.replica):
            for (tt, r), store in where.items():
                if tt != t:
                    continue
                lo, hi = self.po.ring.range_of(r)
                a = int(np.searchsorted(keys, np.uint64(lo)))
                b = keys.size if hi >= 1 << 64 else int(np.searchsorted(keys, np.uint64(hi)))
                cols = [values[a:b].reshape(b - a, vdim)]
                cols += [state[n][a:b].reshape(b - a, vdim) if n in state
                         else np.zeros((b - a, vdim)) for n in store.state]
                store.assign_rows(keys[a:b], np.concatenate(cols, axis=1).astype(store.dtype))
                loaded += b - a if where is self.primary else 0
        return loaded

    @property
    def num_keys(self) -> int:
        return sum(len(s) for s in self.primary.values())

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.primary.values()) + \
            sum(s.nbytes for s in self.replica.values())

    # ---- requests -----------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        t = time.perf_counter()
        try:
            self._handle(msg)
        finally:
            self.busy_seconds += time.perf_counter() - t
        if self._writing:  # a busy server rarely idles: look here too
            self._report_written()

    def _handle(self, msg: Message) -> None:
        # filters (issue 6): keys and values as the worker gave them, decoded in
        # arrival order (key caches replay the sender's), before any deferral
        msg = self.filters.decode_request(msg)
        if msg.ring_version > self.po.ring.version:
            self.deferred.append(msg)  # the ring update is still on its way
            return
        replicate = self.po.ring.replication > 0 and msg.op != Op.PULL
        slots = None  # store slots of the keys: a request of a registered key set
        try:
            if msg.flags & FLAG_POSITIONS:
                pieces, slots, keys_of = self.keysets.translate(
                    msg.sender, msg.table, msg.keyset, msg.keys, self.primary)
                self._check_values(msg, slots.size)
                msg.keys = None
                if replicate or self.aggregator.groups:  # replicas and held pulls: keys
                    msg.keys, msg.flags = keys_of(), msg.flags & ~FLAG_POSITIONS
            else:
                pieces = self._check(msg)
        except ValueError as e:  # KeySetError too
            self.po.send(msg.sender, Message(op=Op.ERROR, table=msg.table, ts=msg.ts,
                                             aux2=msg.aux2, meta=str(e).encode()))
            return
        if msg.keys is not None and self.aggregator.intercept(msg):  # consistency
            return
        nkeys = slots.size if slots is not None else msg.keys.size
        self.requests += 1
        self.keys_served += nkeys
        t, keys, vals = msg.table, msg.keys, msg.vals
        rows_out = [] if msg.op != Op.PUSH else None
        self._next_repl += 1
        held = _AwaitReplicas(self._next_repl, msg.sender, Message(
            op=Op.PUSH_ACK if msg.op == Op.PUSH else Op.PULL_REPLY, table=t, ts=msg.ts,
            aux2=msg.aux2, vdim=self.tables[t].vdim))
        # A key list the key-cache filter named: its slots are cached under
        # its signature, so a repeat skips the lookup (and the comparison).
        sig = msg.key_signature
        who = (msg.sender, msg.chunk) if sig is None else Signed(msg.sender, sig)
        rid = request_id(msg.ts, msg.chunk)
        for r, a, b in pieces:
            store = self.primary[(t, r)]
            k = None if keys is None else keys[a:b]
            at = None if slots is None else slots[a:b]
            duplicate = replicate and (msg.sender, rid) in self.applied[r]
            if msg.op == Op.PULL or duplicate:
                if rows_out is not None:
                    rows_out.append(store.pull(k, sender=who) if at is None
                                    else store.pull_at(at))
                continue
            if msg.op == Op.PUSH:
                if at is None:
                    store.push(k, vals[a:b], who)
                else:
                    store.update_at(at, vals[a:b])
            else:
                rows_out.append(store.pushpull(k, vals[a:b], who) if at is None
                                else store.update_at(at, vals[a:b], want_rows=True))
            if replicate:
                self.applied[r].add(msg.sender, rid)
                self._forward(t, r, k, store, msg, held, at)
        if rows_out is not None:
            held.reply.vals = rows_out
            self.filters.encode_reply(held.reply)
        if self._promoted_version == self.po.ring.version:
            self._promoted_version = -1
            self.po.event("first_served", ring_version=self.po.ring.version)
        if held.waiting:
            self.awaiting[held.id] = held
        else:
            # a reply to a request of a bundle goes with the bundle's other replies
            self.po.send(held.reply_to, held.reply, defer=msg.bundled)

    def _check_values(self, msg: Message, nkeys: int) -> None:
        if msg.op != Op.PULL:
            vdim = self.tables[msg.table].vdim
            nvals = 0 if msg.vals is None else msg.vals.size
            if nvals != nkeys * vdim:
                raise ValueError(f"{nvals} values for {nkeys} keys of vdim {vdim}")

    def _check(self, msg: Message) -> list[tuple[int, int, int]]:
        if not 0 <= msg.table < len(self.tables):
            raise ValueError(f"unknown table id {msg.table}")
        keys = msg.keys
        self._check_values(msg, keys.size)
        # the worker checked its keys at its door (check_keys) and says so
        if not msg.flags & FLAG_KEYS_CHECKED and not strictly_increasing(keys):
            raise ValueError("keys must be sorted and unique")
        pieces = self.po.ring.segments(keys)
        for r, _, _ in pieces:
            if (msg.table, r) not in self.primary:
                lo, hi = self.po.ring.range_of(r)
                raise ValueError(f"keys in range {r} [{lo:#x}, {hi:#x}) are not owned by "
                                 f"server {self.server} (ring version {self.po.ring.version})")
        return pieces

    def apply_sum(self, table: int, keys: np.ndarray, sums: np.ndarray,
                  contributors: list[Message]) -> None:
        """Apply one aggregated update (sorted unique ``keys``, their summed
        rows) made of the pushes ``contributors``: once, through the table's
        handle; replicas get it once per contributor, so each records every
        contributor's request as applied. Every contributor is acknowledged
        when the replicas have it."""
        vdim = self.tables[table].vdim
        helds = []
        for m in contributors:
            self._next_repl += 1
            helds.append(_AwaitReplicas(self._next_repl, m.sender, Message(
                op=Op.PUSH_ACK, table=table, ts=m.ts, aux2=m.aux2, vdim=vdim)))
        replicate = self.po.ring.replication > 0
        starts, ranges = self.po.ring.slice(keys)
        for j, r in enumerate(ranges.tolist()):
            a, b = int(starts[j]), int(starts[j + 1])
            store = self.primary[(table, r)]
            k = keys[a:b]
            store.push(k, sums[a:b], -2)
            if replicate:
                for m, held in zip(contributors, helds, strict=True):
                    self.applied[r].add(m.sender, request_id(m.ts, m.chunk))
                    self._forward(table, r, k, store, m, held)
        self.requests += len(contributors)
        self.keys_served += sum(int(m.keys.size) for m in contributors)
        for held in helds:
            if held.waiting:
                self.awaiting[held.id] = held
            else:
                self.po.send(held.reply_to, held.reply)

    def on_aggregated(self, listener: Callable[[int, int], None]) -> None:
        """Call ``listener(table id, task)`` after each aggregated update is applied."""
        self.aggregator.listeners.append(listener)

    # ---- replication --------------------------------------------------------------
    def _forward(self, t: int, r: int, keys: np.ndarray, store: Any, msg: Message,
                 held: _AwaitReplicas, slots: np.ndarray | None = None) -> None:
        rows = store.rows_with_state(keys) if slots is None else store.rows_with_state_at(slots)
        meta = Message.jmeta([msg.sender, request_id(msg.ts, msg.chunk)])
        for replica in self.po.ring.replicas(r):
            rank = self.po.server_rank(replica)
            if rank in self.po.van.dead:
                continue
            self.po.send(rank, Message(op=Op.REPL, table=t, aux=r, ts=held.id, keys=keys,
                                       vals=rows, vdim=rows.shape[1], meta=meta))
            held.waiting.add((rank, r))

    def _replicate_in(self, msg: Message) -> None:
        t, r = msg.table, msg.aux
        store = self.replica.get((t, r))
        if store is None:
            store = self.replica[(t, r)] = self._new_store(t)
            self.applied.setdefault(r, RecentRequests())
        store.assign_rows(msg.keys, msg.vals)
        sender, ts = msg.json()
        self.applied[r].add(sender, ts)
        self.po.send(msg.sender, Message(op=Op.REPL_ACK, ts=msg.ts, aux=r))

    def _replica_ack(self, msg: Message) -> None:
        held = self.awaiting.get(msg.ts)
        if held is None:
            return  # completed already: the replica was declared dead meanwhile
        held.waiting.discard((msg.sender, msg.aux))
        if not held.waiting:
            del self.awaiting[msg.ts]
            self.po.send(held.reply_to, held.reply)

    # ---- ring changes: failover and repair -------------------------------------------
    def on_ring_change(self, old: KeyRing, new: KeyRing) -> None:
        me = self.server
        promoted = []
        for r in range(new.num_ranges):
            if int(new.owners[r]) == me and int(old.owners[r]) != me:
                for t in range(len(self.tables)):
                    store = self.replica.pop((t, r), None)
                    if store is None:
                        raise RuntimeError(f"server {me} takes over range {r} but holds "
                                           "no replica of it: its data is lost")
                    self.primary[(t, r)] = store
                promoted.append(r)
        if promoted:
            self._promoted_version = new.version
        # Replies that waited for a replica that died are complete now, and
        # snapshots to dead servers will never be acknowledged.
        dead = {self.po.server_rank(s) for s in new.dead}
        self.snapshots_out = {x for x in self.snapshots_out if x[0] not in dead}
        for key, held in list(self.awaiting.items()):
            held.waiting = {w for w in held.waiting if w[0] not in dead}
            if not held.waiting:
                del self.awaiting[key]
                self.po.send(held.reply_to, held.reply)
        self._repair(old, new, set(promoted))
        still, self.deferred = self.deferred, []
        for msg in still:
            if msg.op in (Op.KEYSET, Op.KEYSET_DROP):
                self._keyset_in(msg)
            else:
                self.handle(msg)

    # ---- registered key sets ----------------------------------------------------------
    def _keyset_in(self, msg: Message) -> None:
        """A worker registers (KEYSET) or forgets (KEYSET_DROP) a key set; a
        message of a ring this server has not seen yet waits in ``deferred``,
        in order with the requests behind it."""
        if msg.ring_version > self.po.ring.version:
            self.deferred.append(msg)
            return
        if msg.op == Op.KEYSET_DROP:
            self.keysets.drop(msg.sender, msg.table, msg.keyset)
            return
        if msg.sender in self.po.van.dead:
            return  # sent before its worker died: nothing will use it
        starts, ranges = self.po.ring.slice(msg.keys)
        self.keysets.register(msg.sender, msg.table, msg.keyset, msg.keys, starts, ranges)

    def _peer_gone(self, rank: int) -> None:
        """A dead worker's key sets are never used again: let go of them (in
        a long job they would pile up with every worker lost)."""
        if rank in self.po.layout.workers:
            self.keysets.drop_sender(rank)

    def _repair(self, old: KeyRing, new: KeyRing, promoted: set[int]) -> None:
        """Copy each owned range to the replicas that did not hold it (or to all
        replicas of a range just taken over: the dead owner may have reached
        some replicas and not others)."""
        for r in range(new.num_ranges):
            if int(new.owners[r]) != self.server:
                continue
            for replica in new.replicas(r):
                if r not in promoted and replica in old.holders(r):
                    continue
                rank = self.po.server_rank(replica)
                for t in range(len(self.tables)):
                    store = self.primary[(t, r)]
                    keys, rows = store.keys, store.rows_with_state(store.keys)
                    self.po.send(rank, Message(
                        op=Op.SNAPSHOT, table=t, aux=r, keys=keys, vals=rows,
                        vdim=rows.shape[1], meta=Message.jmeta(self.applied[r].to_list())))
                    self.snapshots_out.add((rank, t, r))
        if not self.snapshots_out:
            self._report_repaired()

    def _snapshot_in(self, msg: Message) -> None:
        t, r = msg.table, msg.aux
        store = self._new_store(t)
        store.assign_rows(msg.keys, msg.vals)
        self.replica[(t, r)] = store
        self.applied[r] = RecentRequests.from_list(msg.json())
        self.po.send(msg.sender, Message(op=Op.SNAPSHOT_ACK, table=t, aux=r))

    def _snapshot_ack(self, msg: Message) -> None:
        self.snapshots_out.discard((msg.sender, msg.table, msg.aux))
        if not self.snapshots_out:
            self._report_repaired()

    def _report_repaired(self) -> None:
        self.po.send(self.po.layout.scheduler, Message(
            op=Op.REPAIRED, aux=self.po.ring.version,
            meta=Message.jmeta({"time": time.time(), "keys": self.num_keys})))

    # ---- checkpoints ---------------------------------------------------------------
    def _checkpoint(self, msg: Message) -> None:
        """Copy the ranges this server owns (the workers are paused for this
        copy only: CHECKPOINT_COPIED ends the pause), then write the copy
        from a thread while requests are served (h5py lets go of the GIL
        while it writes); CHECKPOINTED says when the file is complete."""
        from pathlib import Path

        from .. import checkpoint
        tables = {t.name: self.items(t.name) for t in self.tables}  # copies
        self.po.send(msg.sender, Message(op=Op.CHECKPOINT_COPIED, aux=msg.aux))
        root, ckpt, server = Path(msg.meta.decode()), msg.aux, self.server
        outcome: dict[str, Any] = {}

        def write() -> None:
            try:
                outcome["entry"] = checkpoint.write_shard(root, ckpt, server, tables)
            except Exception as e:  # reported by the main thread: the job decides
                outcome["error"] = f"server {server}: cannot write checkpoint {ckpt}: {e}"

        thread = threading.Thread(target=write, name=f"mpips-checkpoint-{ckpt}", daemon=True)
        thread.start()
        self._writing.append((thread, outcome, msg.sender, ckpt))

    def _report_written(self) -> None:
        """Send CHECKPOINTED for each checkpoint file the writer finished."""
        if not self._writing:
            return
        still = []
        for thread, outcome, to, ckpt in self._writing:
            if thread.is_alive():
                still.append((thread, outcome, to, ckpt))
                continue
            self.po.send(to, Message(op=Op.CHECKPOINTED, aux=ckpt, meta=Message.jmeta(
                outcome.get("entry") or {"error": outcome.get("error", "no file written")})))
        self._writing = still

    def _resume(self, msg: Message) -> None:
        """Load this server's primary and replica ranges from a checkpoint
        (``resumed`` then becomes True)."""
        from ..checkpoint import load_ranges
        manifest = msg.json()
        loaded = 0
        for where in (self.primary, self.replica):
            for (t, r), store in where.items():
                lo, hi = self.po.ring.range_of(r)
                keys, values, state = load_ranges(manifest, self.tables[t].name, lo, hi)
                cols = [values, *(state[n] for n in store.state)]
                store.assign_rows(keys, np.concatenate(cols, axis=1) if len(cols) > 1
                                  else values)
                loaded += keys.size if where is self.primary else 0
        self.resumed = True
        self.po.send(msg.sender, Message(op=Op.LOADED, meta=Message.jmeta({"keys": loaded})))
