"""Transport: framed numpy buffers over nonblocking MPI. The only layer that
imports MPI (:mod:`mpips.transport.van`).

The van is loaded on first use of ``Van`` or ``TransportTimeout``, not when
this package is imported: commands that start no ranks (``--help``,
``config``, ``inspect``, ``plot``) then work on a machine without an MPI
library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .message import HEADER, Message, Op, decode, encode

if TYPE_CHECKING:
    from .van import TransportTimeout, Van

__all__ = ["HEADER", "MPIUnavailable", "Message", "Op", "TransportTimeout", "Van",
           "decode", "encode"]

_LAZY = ("TransportTimeout", "Van")


class MPIUnavailable(RuntimeError):
    """mpi4py or the MPI library under it cannot be loaded on this machine."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import van  # raises MPIUnavailable where MPI cannot load
        return getattr(van, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
