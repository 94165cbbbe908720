"""The postoffice: what one rank knows of the job, and the loop that serves it.

It owns the van, the layout (roles), the key ring and the tables, and routes
every received message to whoever waits for it (kv worker replies, kv server
requests, scheduler control). Control messages every role obeys are handled
here: ABORT ends the process at once. Failures go through :meth:`fail`, which
prints rank, role and cause once and takes the whole job down.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .app import Table
from .config import Config
from .layout import SCHEDULER, SERVER, WORKER, Layout, make_layout
from .ring import KeyRing
from .status import write_status
from .transport import Message, Op
from .transport.hosts import HostTree

if TYPE_CHECKING:
    from .transport import Van

Handler = Callable[[Message], None]


@dataclass
class Command:
    """An app's own request to another rank, or the answer to one: a name,
    JSON arguments and optional arrays (keys uint64, vals (n, vdim))."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    keys: np.ndarray | None = None
    vals: np.ndarray | None = None
    sender: int = -1


ALL, WORKERS = 0, 1  # barrier groups
ABORT_JOB = 1  # ABORT flag: the whole job ends (host leaders pass it on); 0: this rank
END_RANK = "mpips.end_rank"  # command: SIGKILL a rank of this host taken for gone
# command to the scheduler: this worker's progress counters at the checkpoint
# the job resumed from
RESUMED_COUNTERS = "mpips.resumed_counters"
_REPLIES = (Op.PUSH_ACK, Op.PULL_REPLY, Op.ERROR)


class JobAborted(SystemExit):
    """Another rank failed; this one leaves quietly (with its exit code)."""

    def __init__(self, code: int = 1, text: str = ""):
        super().__init__(code)
        self.text = text


class JobPreempted(Exception):
    """The scheduler wrote a checkpoint on a signal and stops the job."""


def van_for(cfg: Config) -> Van:
    """This rank's van, set up from the job's [transport] and [kv] sections.

    MPI is loaded here, when a rank starts, not when mpips is imported."""
    from .transport import Van
    return Van(idle_sleep=cfg.transport.idle_sleep,
               yield_seconds=cfg.transport.yield_seconds,
               recv_pool_bytes=cfg.transport.recv_pool_bytes,
               coalesce_bytes=cfg.kv.coalesce_bytes)


class Postoffice:
    """Per-rank runtime: van, layout, ring, tables and message routing."""

    def __init__(self, cfg: Config, tables: list[Table], van: Van | None = None):
        self.cfg = cfg
        self.van = van if van is not None else van_for(cfg)
        self.rank = self.van.rank
        self.timeout = cfg.transport.timeout
        self.tables = list(tables)
        self.table_ids = {t.name: i for i, t in enumerate(self.tables)}
        hosts = self.van.host_ids()
        self.layout: Layout = make_layout(self.van.size, cfg.layout.servers, hosts,
                                          cfg.layout.spread_hosts)
        self.role = self.layout.role(self.rank)
        self.ring = KeyRing(len(self.layout.servers), cfg.layout.virtual_servers,
                            cfg.layout.replication,
                            hosts=tuple(self.layout.hosts[r] for r in self.layout.servers))
        self.handlers: dict[int, Handler] = {}
        self.clients: dict[int, Handler] = {}  # table id -> kv worker reply handler
        # Called with (old ring, new ring) after a failover changed the ring.
        self.ring_listeners: list[Callable[[KeyRing, KeyRing], None]] = []
        # Called with a rank found gone (MPI or heartbeats), on every rank but
        # the scheduler, to let go of what that rank held here; what the
        # failure changes for the job is the scheduler's to decide.
        self.failure_listeners: list[Callable[[int], None]] = []
        self.observers: list[Handler] = []  # see every message (the scheduler's watch)
        self.heartbeat_interval = cfg.transport.heartbeat_interval
        # Called before this worker reports a task done (kv workers push what
        # their filters hold back and wait for their requests' answers).
        self.task_boundary: list[Callable[[], None]] = []
        self._stats: dict[tuple[str, ...], Callable[[], dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []  # the scheduler's event log
        self.stop_requested: str | None = None  # a signal asked for checkpoint-and-stop
        self.stop_requested_at = 0.0  # time.monotonic() of that signal
        self._last_heartbeat = time.monotonic()
        self._idle_hooks: list[Callable[[], None]] = []
        self._commands: dict[str, Callable[[Command], Command | None]] = {}
        self._answers: dict[int, Command] = {}  # command id -> answer
        self._next_command = 0
        self._barrier_passed: set[tuple[int, int]] = set()
        self._next_barrier = {ALL: 0, WORKERS: 0}
        # the scheduler's answers to task requests, in order (None: no task left)
        self.task_inbox: list[dict[str, Any] | None] = []
        self._workers_dead_at_barrier: set[int] = set()  # as the last WORKERS release said
        self.started = time.monotonic()
        # heartbeats from a thread (a rank computing is still alive); where
        # the MPI cannot serve two threads, from the wait loops (heartbeat())
        self.beats_from_thread = self.van.start_liveness(
            self.layout.scheduler, self.heartbeat_interval, list(self.layout.hosts))
        # ring changes come down the host tree: leaders relay them
        self.host_tree = HostTree(list(self.layout.hosts), self.layout.scheduler)
        self.on_command(END_RANK, self._end_rank)

    # ---- identity ------------------------------------------------------------
    @property
    def is_scheduler(self) -> bool:
        return self.role == SCHEDULER

    @property
    def is_server(self) -> bool:
        return self.role == SERVER

    @property
    def is_worker(self) -> bool:
        return self.role == WORKER

    @property
    def who(self) -> str:
        return f"rank {self.rank} ({self.layout.describe(self.rank)})"

    def server_rank(self, server: int) -> int:
        return self.layout.servers[server]

    def worker_index(self) -> int:
        return self.layout.workers.index(self.rank)

    @property
    def num_workers(self) -> int:
        return len(self.layout.workers)

    def live_workers(self) -> list[int]:
        """Ranks of the workers alive at the last WORKERS barrier (the scheduler
        says who passed it) and not known to be dead since."""
        gone = self._workers_dead_at_barrier
        return [r for r in self.layout.workers if r not in gone and r not in self.van.dead]

    # ---- messages --------------------------------------------------------------
    def send(self, dest: int, msg: Message, defer: bool = False) -> None:
        """Send ``msg``; ``defer``: it may wait to go with others (the van's
        coalescing, when ``[kv] coalesce_bytes`` is on)."""
        msg.ring_version = self.ring.version
        self.van.send(dest, msg, defer)
        if dest == self.layout.scheduler:
            self._last_heartbeat = time.monotonic()  # any message says "alive"

    def on_idle(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` between empty polls of every wait (work a thread
        finished, to be reported from this one)."""
        self._idle_hooks.append(hook)

    def heartbeat(self) -> None:
        """Between empty polls: the idle hooks, then tell the scheduler this
        rank lives, if it has not heard so lately (where no heartbeat thread
        does it)."""
        for hook in self._idle_hooks:
            hook()
        if self.is_scheduler or self.beats_from_thread:
            return
        if time.monotonic() - self._last_heartbeat >= self.heartbeat_interval:
            self.send(self.layout.scheduler, Message(op=Op.HEARTBEAT))

    def event(self, name: str, **fields: Any) -> None:
        """A timestamped event for the scheduler's log (failover timings...)."""
        fields.update(event=name, time=time.time(), rank=self.rank)
        if self.is_scheduler:
            self.handlers[Op.EVENT](Message(op=Op.EVENT, sender=self.rank,
                                            meta=Message.jmeta(fields)))
        else:
            self.send(self.layout.scheduler, Message(op=Op.EVENT, meta=Message.jmeta(fields)))

    def add_stats(self, path: tuple[str, ...], source: Callable[[], dict[str, Any]]) -> None:
        """Register ``source`` (returns JSON-able statistics) under ``path`` of
        :meth:`stats`: e.g. ``("worker", "w")`` for a kv worker's filters."""
        self._stats[path] = source

    def stats(self) -> dict[str, Any]:
        """Every registered statistic of this rank, nested by path."""
        out: dict[str, Any] = {}
        for path, source in self._stats.items():
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = source()
        return out

    def finish_task(self) -> None:
        """A task boundary on this worker: every kv worker pushes what its
        filters hold back and waits until its requests are answered."""
        for hook in self.task_boundary:
            hook()

    # ---- the command door: an app's own messages ------------------------------
    def on_command(self, name: str, handler: Callable[[Command], Command | None]) -> None:
        """Serve command ``name``: ``handler(command)`` returns the answer to
        :meth:`ask` (its name is ignored; None for :meth:`tell`). A handler
        that raises fails this rank."""
        if not self._commands:
            self.on(Op.APP, self._serve_command)
            self.on(Op.APP_REPLY, self._take_answer)
        self._commands[name] = handler

    def ask(self, ranks: list[int], command: Command,
            timeout: float | None = None) -> list[Command]:
        """Send ``command`` to every rank of ``ranks`` and wait for their
        answers (in the order of ``ranks``)."""
        if Op.APP_REPLY not in self.handlers:
            self.on(Op.APP_REPLY, self._take_answer)
        ids = []
        for rank in ranks:
            self._next_command += 1
            ids.append(self._next_command)
            self._send_command(rank, Op.APP, self._next_command, command)
        self.wait_until(lambda: all(i in self._answers for i in ids),
                        lambda: f"answers to command {command.name!r} from ranks "
                        f"{[r for r, i in zip(ranks, ids, strict=True) if i not in self._answers]}",
                        timeout)
        return [self._answers.pop(i) for i in ids]

    def tell(self, rank: int, command: Command) -> None:
        """Send ``command`` to ``rank`` and expect no answer."""
        self._send_command(rank, Op.APP, 0, command)

    def _send_command(self, rank: int, op: int, cid: int, c: Command) -> None:
        vals = None if c.vals is None else np.ascontiguousarray(c.vals)
        self.send(rank, Message(op=op, aux=cid, meta=Message.jmeta([c.name, c.args]),
                                keys=c.keys, vals=vals,
                                vdim=0 if vals is None else (vals.shape[1] if vals.ndim > 1
                                                             else 1)))

    def _received(self, msg: Message) -> Command:
        name, args = msg.json()
        vals = None if msg.vals is None else np.asarray(msg.vals).reshape(-1, max(1, msg.vdim))
        return Command(name, args, msg.keys, vals, msg.sender)

    def _serve_command(self, msg: Message) -> None:
        asked = self._received(msg)
        handler = self._commands.get(asked.name)
        if handler is None:
            raise RuntimeError(f"{self.who} got command {asked.name!r} from rank "
                               f"{msg.sender}, which it does not serve")
        answer = handler(asked)
        if msg.aux:  # asked, not told: the sender waits for the answer
            self._send_command(msg.sender, Op.APP_REPLY, msg.aux, answer)

    def _take_answer(self, msg: Message) -> None:
        self._answers[msg.aux] = self._received(msg)

    def on(self, op: int, handler: Handler) -> None:
        """Route messages of ``op`` to ``handler``."""
        self.handlers[int(op)] = handler

    def dispatch(self, msg: Message) -> None:
        for observe in self.observers:
            observe(msg)
        if msg.op == Op.ABORT:
            if msg.flags & ABORT_JOB:  # a leader passes it to its host's ranks
                self._relay(msg, lambda r: r != msg.sender)
            # the failing rank's exit code, for every rank
            raise JobAborted(msg.aux or 1, msg.meta.decode(errors="replace"))
        if msg.op == Op.PREEMPT:
            raise JobPreempted()
        if msg.op == Op.RELEASE:
            key = (msg.flags, msg.aux)
            if key not in self._barrier_passed:  # a leader passes it on, once
                self._relay(msg, self.barrier_member(msg.flags))
            self._barrier_passed.add(key)
            if msg.flags == WORKERS and msg.meta:
                self._workers_dead_at_barrier = set(msg.json())
            return
        if msg.op == Op.RING and not self.is_scheduler:
            if msg.aux <= self.ring.version:
                return  # sent again (its relay died) or relayed late: had it
            self._relay(msg)
            self.set_ring(self.ring.without_all(msg.json(), msg.aux))
            return
        if msg.op == Op.PEER_FAILED and not self.is_scheduler:
            if msg.aux == self.layout.scheduler:
                self._scheduler_died()
            for listener in self.failure_listeners:
                listener(msg.aux)
            return  # the scheduler decides what a failure changes
        if msg.op in _REPLIES:
            handler = self.clients.get(msg.table)
        else:
            handler = self.handlers.get(msg.op)
        if handler is None:
            raise RuntimeError(f"{self.who} got an unexpected message {Op(msg.op).name} "
                               f"from rank {msg.sender}")
        handler(msg)

    def _relay(self, msg: Message, to: Callable[[int], bool] = lambda r: True) -> None:
        """A host leader: pass a broadcast (ring change, barrier release,
        abort) to the live ranks it leads that ``to`` accepts."""
        for member in self.host_tree.reported_by(self.rank):
            if member not in self.van.dead and to(member):
                self.send(member, Message(op=msg.op, flags=msg.flags, aux=msg.aux,
                                          meta=msg.meta))

    def barrier_member(self, group: int) -> Callable[[int], bool]:
        """Whether a rank takes part in barriers of ``group``."""
        if group == ALL:
            return lambda r: r != self.layout.scheduler
        return lambda r: self.layout.role(r) == WORKER

    def broadcast_ring(self, ranks: list[int] | None = None) -> int:
        """The scheduler: send the current ring down the host tree (to
        ``ranks`` themselves, if given); returns the messages it sent."""
        ring = self.ring
        meta = Message.jmeta(list(ring.deaths))  # in order: holders depend on it
        targets = self.host_tree.direct(self.van.dead) if ranks is None else ranks
        for r in targets:
            if r not in self.van.dead:
                self.send(r, Message(op=Op.RING, aux=ring.version, meta=meta))
        return len(targets)

    def set_ring(self, ring: KeyRing) -> None:
        old, self.ring = self.ring, ring
        for server in ring.dead:  # the scheduler may know before this rank's MPI does
            self.van.mark_dead(self.server_rank(server))
        for listener in self.ring_listeners:
            listener(old, ring)

    def _scheduler_died(self) -> None:
        live = [r for r in range(self.van.size) if r not in self.van.dead]
        if self.rank == live[0]:  # one survivor says it
            print(f"mpips: the scheduler (rank {self.layout.scheduler}) died: the job "
                  "stops. Restart it with --resume to continue from the last checkpoint.",
                  file=sys.stderr, flush=True)
        self.van.finalize_and_exit(1)

    def end_rank(self, rank: int) -> str | None:
        """SIGKILL ``rank``'s process, if it runs on this rank's host (the
        scheduler ends ranks it took for gone: a stopped process would hold
        every survivor's shutdown). Returns how it went, None if not here."""
        if self.layout.hosts[rank] != self.layout.hosts[self.rank] or not self.van.pids:
            return None
        pid = self.van.pids[rank]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return f"pid {pid} had already ended"
        except PermissionError as e:
            return f"pid {pid} could not be ended: {e}"
        return f"pid {pid} killed"

    def _end_rank(self, command: Command) -> None:
        result = self.end_rank(int(command.args["rank"]))
        print(f"mpips: {self.who}: rank {command.args['rank']} taken for gone by the "
              f"scheduler: {result or 'not on this host'}", flush=True)

    def wait_until(self, done: Callable[[], bool], what: Callable[[], str],
                   timeout: float | None = None,
                   idle: Callable[[], None] | None = None) -> None:
        """Serve messages until ``done()``; time out naming ``what()``.
        ``idle`` runs between empty polls (default: send heartbeats)."""
        if done():
            return

        def handle(msg: Message) -> bool:
            self.dispatch(msg)
            return done()

        self.van.wait_for(handle, self.timeout if timeout is None else timeout, what,
                          idle=idle or self.heartbeat)

    def serve_forever(self, stop: Callable[[], bool]) -> None:
        """Serve until ``stop()``: servers and the scheduler wait here with no
        deadline of their own (ABORT and failures still end the wait)."""
        while not stop():
            self.wait_until(stop, lambda: "", timeout=float("inf"))

    # ---- job-wide steps ----------------------------------------------------------
    def barrier(self, group: int = ALL) -> None:
        """Meet the other ranks of ``group`` (ALL non-scheduler ranks, or the
        WORKERS); the scheduler releases them. No busy-polling MPI call."""
        if self.is_scheduler:
            raise RuntimeError("the scheduler takes no part in barriers it runs")
        bid = self._next_barrier[group]
        self._next_barrier[group] += 1
        self.send(self.layout.scheduler, Message(op=Op.BARRIER, flags=group, aux=bid))
        self.wait_until(lambda: (group, bid) in self._barrier_passed,
                        lambda: f"barrier {bid}: no release from the scheduler (rank 0)")

    # One task protocol: a worker sends TASK_REQ {"done": [tasks finished],
    # "want": whether it wants another}; the scheduler answers a want with
    # TASK when the consistency policy lets the task start (``task_inbox``).
    def next_task(self, done: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Finish ``done`` (a task of this worker: its pushes are flushed and
        acknowledged first), report it, and wait for the next task: ``{"epoch",
        "partition", "path", "attempt", "ts"}`` (or what the app's queue
        describes), or None when every task is done."""
        self.finish_task()
        self.request_task([done] if done is not None else [])
        # No deadline: the answer may wait for other workers to end an epoch.
        self.wait_until(lambda: bool(self.task_inbox), lambda: "", timeout=float("inf"))
        return self.task_inbox.pop(0)

    # Overlapping tasks (bounded delay): ask for the next task while earlier
    # ones still wait for replies; report each done when its requests are.
    def request_task(self, done: list[dict[str, Any]] | tuple = ()) -> None:
        """Report ``done`` and ask for a task without waiting: the answer (a
        task dict, or None when all are done) is appended to ``task_inbox``;
        the scheduler holds it until the consistency policy lets it start."""
        self._send_task_request(list(done), want=True)

    def report_done(self, done: list[dict[str, Any]]) -> None:
        """Tell the scheduler these tasks finished (their requests are answered)."""
        if done:
            self._send_task_request(list(done), want=False)

    def _send_task_request(self, done: list[dict[str, Any]], want: bool) -> None:
        if Op.TASK not in self.handlers:
            self.on(Op.TASK, lambda msg: self.task_inbox.append(msg.json()))
        self.send(self.layout.scheduler, Message(
            op=Op.TASK_REQ, meta=Message.jmeta({"done": done, "want": want})))

    def resumed_counters(self) -> dict[str, Any]:
        """A worker of a resumed job: its progress counters as the scheduler
        last had them at the checkpoint (empty if the job did not resume), so
        that counts go on from there instead of from zero."""
        if not self.cfg.checkpoint.resume:
            return {}
        return self.ask([self.layout.scheduler], Command(RESUMED_COUNTERS))[0].args

    def report(self, counters: dict[str, Any]) -> None:
        """Send progress counters to the scheduler (summed over workers)."""
        self.send(self.layout.scheduler, Message(op=Op.REPORT, meta=Message.jmeta(counters)))

    def fail(self, exc: BaseException) -> None:
        """Print rank, role and cause once, stop every rank, exit non-zero."""
        if isinstance(exc, JobAborted):
            if self.is_scheduler:
                write_status(self.cfg.job.output, "failed", code=int(exc.code or 1),
                             message=exc.text)
            self.van.finalize_and_exit(int(exc.code or 1))
        cause = f"{type(exc).__name__}: {exc}"
        text = f"mpips: {self.who} failed: {cause}"
        code = getattr(exc, "exit_code", 1)
        if self.is_scheduler:
            write_status(self.cfg.job.output, "failed", code=code, message=text)
        if os.environ.get("MPIPS_TRACEBACK"):
            traceback.print_exc()
        print(text, file=sys.stderr, flush=True)
        self.abort_job(text, code)
        self.van.finalize_and_exit(code)

    def abort_job(self, text: str, code: int) -> None:
        """Tell every other rank the job failed: ``text``, and the exit code
        they are to leave with. Down the host tree: the scheduler, the host
        leaders, this host's ranks if this rank leads it, and the ranks of
        dead leaders; the leaders pass it on. Were a leader stopped, its
        ranks would still learn of the end: the failing rank's exit is a
        failure MPI reports, and the scheduler's too."""
        tree, dead = self.host_tree, self.van.dead
        targets = {self.layout.scheduler, *tree.direct(dead), *tree.reported_by(self.rank)}
        targets.discard(self.rank)
        self.van.abort_all(text, code, ranks=sorted(targets - dead), flags=ABORT_JOB)
