"""Benchmarks: commands that print what they measured, side by side."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def append_jsonl(path: str, records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record to ``path`` (every bench's ``--json``)."""
    with open(path, "a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
