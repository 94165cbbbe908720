"""Progress lines on rank 0: an app's named fields (``App.progress_fields``)
printed one way, as text for people or as JSON for machines
(``[job] log_format``, ``train --log-format``)."""

from __future__ import annotations

import json
import math
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
