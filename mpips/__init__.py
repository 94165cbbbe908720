"""mpips: a parameter server for distributed machine learning, in Python on MPI.

What a user imports; everything else may change::

    import mpips

    class Counter(mpips.App):
        def tables(self):
            return [mpips.Table("w", vdim=1, handle=mpips.AdaGrad(lr=0.1))]

        def run_worker(self, po):
            kv = mpips.KVWorker(po, "w")
            ...

    cfg = mpips.load_config(None, ["layout.servers=1"])
    mpips.run(cfg, Counter(cfg))      # mpiexec -n 3 python counter.py

Names load on first use, so ``import mpips`` stays cheap and loads no MPI
(MPI starts in :func:`run`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_FACE = {
    # the app contract
    "App": "mpips.app", "Table": "mpips.app", "WorkQueue": "mpips.app",
    "QueueError": "mpips.app",
    # job files
    "Config": "mpips.config", "ConfigError": "mpips.config",
    # the kv API and the servers' update rules
    "KVWorker": "mpips.kv.worker", "KVError": "mpips.kv.worker",
    "KVServer": "mpips.kv.server",
    "Handle": "mpips.handles", "Assign": "mpips.handles", "Add": "mpips.handles",
    "SGD": "mpips.handles", "AdaGrad": "mpips.handles",
    "UserHandle": "mpips.handles",
    # keys
    "hash_feature": "mpips.keys", "mix64": "mpips.keys", "fnv1a64": "mpips.keys",
    # running a job
    "Postoffice": "mpips.postoffice", "run": "mpips.runtime",
    # driving jobs from Python (a child process runs mpips run)
    "run_job": "mpips.driver", "JobResult": "mpips.driver", "JobFailed": "mpips.driver",
    # work queues
    "PartitionQueue": "mpips.data.queue", "IterationQueue": "mpips.consistency.clock",
}
_RENAMED = {"load_config": ("mpips.config", "load")}

__all__ = [
    "AdaGrad",
    "Add",
    "App",
    "Assign",
    "Config",
    "ConfigError",
    "Handle",
    "IterationQueue",
    "JobFailed",
    "JobResult",
    "KVError",
    "KVServer",
    "KVWorker",
    "PartitionQueue",
    "Postoffice",
    "QueueError",
    "SGD",
    "Table",
    "UserHandle",
    "WorkQueue",
    "__version__",
    "fnv1a64",
    "hash_feature",
    "load_config",
    "mix64",
    "run",
    "run_job",
]

assert set(__all__) == {*_FACE, *_RENAMED, "__version__"}

if TYPE_CHECKING:
    from .app import App, QueueError, Table, WorkQueue
    from .config import Config, ConfigError
    from .config import load as load_config
    from .consistency.clock import IterationQueue
    from .data.queue import PartitionQueue
    from .driver import JobFailed, JobResult, run_job
    from .handles import SGD, AdaGrad, Add, Assign, Handle, UserHandle
    from .keys import fnv1a64, hash_feature, mix64
    from .kv.server import KVServer
    from .kv.worker import KVError, KVWorker
    from .postoffice import Postoffice
    from .runtime import run


def __getattr__(name: str) -> Any:
    if name in _FACE:
        module, attr = _FACE[name], name
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
    else:
        raise AttributeError(f"module 'mpips' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__
