"""Filters: send only what must be sent (issue 6).

A chain of encoders at the sender and decoders at the receiver, per table and
direction (push, pull), configured in ``[filters]``: key caching, key
compression, fixed-point rounding, value compression, significantly-modified
and KKT filters. The kv layer calls :func:`for_worker` / :func:`for_server`
hooks where messages are built and read; see :mod:`mpips.filters.chain`.
"""

from .base import FilterStats, signature
from .chain import (
    FILTERS,
    ServerFilters,
    WorkerFilters,
    flush,
    for_server,
    for_worker,
    parse_specs,
    rank_stats,
    wire_bytes,
)

__all__ = ["FILTERS", "FilterStats", "ServerFilters", "WorkerFilters", "flush", "for_server",
           "for_worker", "parse_specs", "rank_stats", "signature", "wire_bytes"]
