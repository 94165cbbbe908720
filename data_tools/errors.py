"""Errors that data_tools reports to the user (one line, no traceback)."""

from __future__ import annotations


class DataError(Exception):
    """Input or output that cannot be used; the message says what and where."""


class BadLine(DataError):
    """A malformed input line: ``file:line: reason``."""

    def __init__(self, source: str, line: int, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason
