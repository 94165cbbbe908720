"""Streaming count-min sketch (``app = "sketch"``).

Modules: ``app`` (job section, worker stream loop, server hooks, the final
index), ``store`` (the servers' count-min rows and heavy-hitter candidates),
``stream`` (the sources a worker reads), ``queries`` (live and saved
queries), ``cli`` (``python -m mpips query``).
"""

from .app import SketchApp
from .queries import query

__all__ = ["SketchApp", "query"]
