"""What an app provides: its tables, a worker loop, and hooks on the other roles.

An app never calls MPI: it uses :class:`~mpips.kv.worker.KVWorker` for data
and the postoffice for reports and barriers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config
from ..kv.table import Table

if TYPE_CHECKING:
    from ..kv.server import KVServer
    from ..postoffice import Postoffice


class App:
    """Base class; subclasses set ``name`` and implement ``tables`` and ``run_worker``."""

    name = "app"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def tables(self) -> list[Table]:
        raise NotImplementedError

    def work_queue(self) -> Any:
        """On the scheduler: a :class:`mpips.data.PartitionQueue` whose tasks
        workers take with ``po.next_task()``, or None for apps without one."""
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

    def progress_line(self, totals: dict[str, float], elapsed: float) -> str:
        """Rank 0's progress line from counters summed over workers."""
        return " ".join(f"{k} {v:.4g}" for k, v in sorted(totals.items()))

    def checkpoint_state(self) -> dict[str, Any]:
        """On the scheduler: app state to keep in a checkpoint (JSON-able)."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """On the scheduler: continue from ``checkpoint_state`` output."""

    def finish(self, po: Postoffice, workers: list[dict[str, Any]],
               servers: list[dict[str, Any]], elapsed: float) -> None:
        """Called on the scheduler at the end with every rank's final results."""
