"""Filters: send only what must be sent.

A chain of encoders at the sender and decoders at the receiver, per table and
direction (push, pull), configured in ``[filters]``: key caching, key
compression, fixed-point rounding, value compression, significantly-modified
and KKT filters. Each KVWorker makes its :class:`WorkerFilters` and each
KVServer its :class:`ServerFilters` from the job config; see
:mod:`mpips.filters.chain`.
"""

from .base import FilterStats, signature
from .chain import FILTERS, ServerFilters, WorkerFilters, parse_specs, wire_bytes

__all__ = ["FILTERS", "FilterStats", "ServerFilters", "WorkerFilters", "parse_specs",
           "signature", "wire_bytes"]
