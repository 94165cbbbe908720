"""Progress lines on rank 0: an app's named fields (``App.progress_fields``)
printed one way, as text for people or as JSON for machines
(``[job] log_format``, ``train --log-format``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any


def text_value(value: Any) -> str:
    """Numbers in one format: counts as they are, other numbers to 4
    digits, with k, M, G from 10 000 up (6.165e+04 reads 61.65k)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    for above, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(value) >= above:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def format_line(elapsed: float, fields: dict[str, Any], log_format: str = "text") -> str:
    """``[elapsed] name value  name value ...`` (``_per_s`` reads ``/s``), or
    the fields as one JSON object; fields that are None or not finite (a
    loss with no examples yet) are left out of both."""
    known = {k: v for k, v in fields.items() if _known(v)}
    if log_format == "json":
        return json.dumps({"elapsed": round(elapsed, 3), **known})
    parts = [f"{k.replace('_per_s', '/s').replace('_', ' ')} {text_value(v)}"
             for k, v in known.items()]
    return f"[{elapsed:7.1f}s] " + "  ".join(parts)


class WorkerCounters:
    """Each worker's last progress counters, and their sums kept up to date
    as reports come, so that a progress line costs the same at 10 workers or
    10000. (Numbers only are summed, as floats; :meth:`exact_totals` sums
    afresh, for the job's last line.)"""

    def __init__(self) -> None:
        self._by_rank: dict[int, dict[str, Any]] = {}
        self._sums: dict[str, float] = {}
        self._reporting: dict[str, int] = {}  # how many workers report each number

    def set(self, rank: int, counters: dict[str, Any]) -> None:
        self.drop(rank)
        self._by_rank[rank] = counters
        for key, value in _numbers(counters):
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._reporting[key] = self._reporting.get(key, 0) + 1

    def drop(self, rank: int) -> None:
        old = self._by_rank.pop(rank, None)
        for key, value in _numbers(old or {}):
            self._reporting[key] -= 1
            if self._reporting[key]:
                self._sums[key] -= value
            else:
                del self._reporting[key], self._sums[key]

    def get(self, rank: int, default: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return self._by_rank.get(rank, default)

    def values(self):
        return self._by_rank.values()

    def __len__(self) -> int:
        return len(self._by_rank)

    def totals(self) -> dict[str, float]:
        return dict(self._sums)

    def exact_totals(self) -> dict[str, float]:
        return sum_counters(self._by_rank.values())


def sum_counters(counters: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Progress counters summed, numbers only (as floats)."""
    totals: dict[str, float] = {}
    for c in counters:
        for key, value in _numbers(c):
            totals[key] = totals.get(key, 0.0) + value
    return totals


def _numbers(counters: dict[str, Any]):
    return ((k, v) for k, v in counters.items() if isinstance(v, (int, float)))
