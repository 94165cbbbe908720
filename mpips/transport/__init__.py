"""Transport: framed numpy buffers over nonblocking MPI. The only layer that
imports MPI (:mod:`mpips.transport.van`)."""

from .message import HEADER, Message, Op, decode, encode
from .van import TransportTimeout, Van

__all__ = ["HEADER", "Message", "Op", "TransportTimeout", "Van", "decode", "encode"]
