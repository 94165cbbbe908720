"""Filters: send only what must be sent.

A chain of encoders at the sender and decoders at the receiver, per table and
direction (push, pull), configured in ``[filters]``: key caching, key
compression, fixed-point rounding, value compression, significantly-modified
and KKT filters. Each KVWorker makes its :class:`WorkerFilters` and each
KVServer its :class:`ServerFilters` from the job config.

Modules: ``spec`` (the ``[filters]`` section: which filters run where),
``worker`` and ``server`` (the two ends of a chain), ``codec`` (value
encodings both ends share), ``base`` (header bits, statistics, the key-list
signature), and one module per filter.
"""

from .base import FilterStats, signature
from .server import ServerFilters
from .spec import FILTERS, parse_specs, wire_bytes
from .worker import WorkerFilters

__all__ = ["FILTERS", "FilterStats", "ServerFilters", "WorkerFilters", "parse_specs",
           "signature", "wire_bytes"]
