"""What every app's progress line needs: how its counters moved since the
previous line (the scheduler calls ``progress_fields`` with running totals)."""

from __future__ import annotations


class Deltas:
    """The change of summed counters between two progress lines."""

    def __init__(self, start: dict[str, float] | None = None) -> None:
        self._elapsed = 0.0
        self._totals: dict[str, float] = dict(start or {})  # a resumed job's counters

    def step(self, totals: dict[str, float], elapsed: float) -> tuple[dict[str, float], float]:
        """(change of each counter since the last call, seconds since): the
        first call measures from the job's start."""
        change = {k: v - self._totals.get(k, 0) for k, v in totals.items()
                  if isinstance(v, (int, float))}
        seconds = max(elapsed - self._elapsed, 1e-9)
        self._elapsed, self._totals = elapsed, dict(totals)
        return change, seconds
