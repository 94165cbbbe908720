"""The scheduler (rank 0): barriers, tasks under the consistency policy,
progress, failures and ring changes, checkpoints, the end of the job.

Modules: ``core`` (the main loop, barriers, progress, results), ``tasks``
(the work queue and the task clock), ``failures`` (heartbeats, failed ranks,
failover), ``checkpoints`` (writing and resuming).
"""

from .core import Scheduler
from .failures import JobFailed

__all__ = ["JobFailed", "Scheduler"]
