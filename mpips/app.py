"""The app contract: what an app declares (its tables and work queue) and the
hooks each role calls. It sits below the postoffice: the runtime, the
scheduler and the postoffice know apps only through it.

An app never calls MPI: it uses :class:`~mpips.kv.KVWorker` for data and the
postoffice for tasks, reports and barriers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .config import Config
from .handles import Add, Handle

if TYPE_CHECKING:
    from .kv.server import KVServer
    from .postoffice import Postoffice

VALUE_DTYPES = ("float32", "float64", "int32", "int64")


@dataclass(frozen=True)
class Table:
    """What every rank knows of a table. Declared identically on all ranks
    (the position in the job's table list is its wire id)."""

    name: str
    vdim: int = 1
    dtype: str = "float32"
    handle: Handle = field(default_factory=Add)
    # Server storage for this table: None is the general SortedStore. An app
    # may give a factory ``store(table) -> object`` with the same methods
    # (vdim, push, pull, pushpull, __len__, nbytes): a count-min sketch, say.
    store: Callable[[Table], Any] | None = None

    def __post_init__(self) -> None:
        if self.vdim < 1:
            raise ValueError(f"table {self.name!r}: vdim must be >= 1, got {self.vdim}")
        if str(np.dtype(self.dtype)) not in VALUE_DTYPES:
            raise ValueError(f"table {self.name!r}: dtype must be one of {VALUE_DTYPES}, "
                             f"got {self.dtype!r}")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


class QueueError(RuntimeError):
    """A report that contradicts a work queue's state (e.g. a task done twice)."""


class WorkQueue(Protocol):
    """What the scheduler asks of an app's work queue (see
    :class:`mpips.data.PartitionQueue`, one worker per task, and
    :class:`mpips.consistency.IterationQueue`, every worker runs every task).
    Tasks are frozen dataclasses; on the wire they travel as ``describe(task)``."""

    everyone: bool  # True: every worker runs every task (the task is an iteration)

    def bind(self, workers: list[int]) -> None:
        """The worker ranks, given by the scheduler (an app does not know the layout)."""

    def peek(self, worker: int) -> int | None:
        """The timestamp of ``worker``'s next task where the queue numbers its
        tasks itself (``everyone``), else None (timestamps are hand-out order)."""

    def next(self, worker: int) -> Any | None:
        """The next task of ``worker``, or None when none can be handed now."""

    def done(self, worker: int, task: Any) -> None:
        """``worker`` finished ``task`` (its pushes are acknowledged)."""

    def requeue(self, worker: int) -> list[Any]:
        """A dead worker's unfinished tasks, handed again to others."""

    def held(self, worker: int) -> list[Any]:
        """The tasks ``worker`` holds."""

    def describe(self, task: Any) -> dict[str, Any]:
        """``task`` as the JSON fields a worker receives."""

    def task_of(self, fields: dict[str, Any]) -> Any:
        """The task a worker reports, from the fields ``describe`` gave it."""

    @property
    def finished(self) -> bool:
        """Every task of every epoch or iteration is done."""

    @property
    def tasks_done(self) -> int:
        """Tasks completed so far."""

    def snapshot(self) -> dict[str, Any]:
        """The queue's position for a checkpoint (JSON-able)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``snapshot`` output."""


class App:
    """Base class; subclasses set ``name`` and implement ``tables`` and ``run_worker``."""

    name = "app"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def tables(self) -> list[Table]:
        raise NotImplementedError

    def before_mpi(self, role: str | None) -> None:
        """Called before MPI starts, with the role this rank will most likely
        have (:func:`mpips.layout.likely_role`; None: unknown): import here
        what that role will need, while the other ranks start too (start-up
        is CPU-bound where ranks share cores). A wrong guess costs only time."""

    def work_queue(self) -> WorkQueue | None:
        """On the scheduler: the queue whose tasks workers take with
        ``po.next_task()``, or None for apps without one."""
        return None

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        """The worker's work; returns its final counters (sent to the scheduler)."""
        raise NotImplementedError

    def on_server_start(self, po: Postoffice, server: KVServer) -> None:
        """Called on each server before it serves: register app messages
        (``po.on(Op.APP, handler)``) or prepare app state."""

    def on_server_stop(self, po: Postoffice, server: KVServer) -> dict[str, Any]:
        """Called on each server once every worker is done (save a model shard...)."""
        return {}

    def progress_fields(self, totals: dict[str, float], elapsed: float) -> dict[str, Any]:
        """Rank 0's progress line from counters summed over workers: named
        numbers in a fixed order (the scheduler prints them as text or JSON)."""
        return dict(sorted(totals.items()))

    def checkpoint_state(self) -> dict[str, Any]:
        """On the scheduler: app state to keep in a checkpoint (JSON-able)."""
        return {}

    def restore_state(self, state: dict[str, Any], counters: dict[str, float]) -> None:
        """On the scheduler: continue from ``checkpoint_state`` output;
        ``counters``: the workers' progress counters summed at that checkpoint
        (workers continue from their own: :meth:`Postoffice.resumed_counters`)."""

    def finish(self, po: Postoffice, workers: list[dict[str, Any]],
               servers: list[dict[str, Any]], elapsed: float) -> None:
        """Called on the scheduler at the end with every rank's final results."""
