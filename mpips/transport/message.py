"""Message framing: a fixed binary header followed by contiguous numpy buffers.

Wire layout of one message (all little-endian, every section 8-byte aligned)::

    header (HEADER.itemsize bytes) | keys (uint64) | vals | meta (bytes)

The header says how many bytes each section has, the value dtype and vdim,
so a receiver views each section in the received buffer without a copy.
No pickle anywhere: ``meta`` is small UTF-8 JSON for control messages only.
This module does not touch MPI; :mod:`mpips.transport.van` moves the bytes.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = 0x5350504D  # "MPPS"
ALIGN = 8

# Below this many bytes a message is copied into one buffer and sent whole;
# above, the van splits it (header, then sections). A framing rule, so it
# lives here and benchmarks can read it without loading MPI.
GATHER_MIN_BYTES = 1 << 16

HEADER = np.dtype([
    ("magic", "<u4"), ("op", "<u2"), ("flags", "<u2"),
    ("table", "<i4"), ("sender", "<i4"),
    ("ring_version", "<i4"), ("filters", "<u4"),
    ("ts", "<i8"),
    ("vdim", "<i4"), ("vcode", "<i4"),
    ("aux", "<i8"), ("aux2", "<i8"),
    ("chunk", "<i4"), ("split", "<i4"),
    ("keyset", "<i8"),
    ("nkeys_bytes", "<i8"), ("nvals_bytes", "<i8"), ("nmeta_bytes", "<i8"),
])
assert HEADER.itemsize % ALIGN == 0
# The same layout for ``struct``: much cheaper to pack than numpy's structured
# scalars, and a small request's framing is mostly this.
_HEADER_STRUCT = struct.Struct("<IHHiiiIqiiqqiiqqqq")
assert _HEADER_STRUCT.size == HEADER.itemsize
_SPLIT_OFFSET = HEADER.fields["split"][1]
_SIZES_OFFSET = HEADER.fields["nkeys_bytes"][1]
_SIZES = struct.Struct("<qqq")

# Value dtypes that may travel, by wire code.
VALUE_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(t) for t in (
    "<f4", "<f8", "<i4", "<i8", "<u1", "<i1", "<u2", "<i2", "<u4", "<u8", "<f2"))
_VCODE = {dt: i for i, dt in enumerate(VALUE_DTYPES)}


class Op(enum.IntEnum):
    """What a message asks for. Replies carry the request's ``ts``."""

    # kv data path
    PUSH = 1
    PULL = 2
    PUSHPULL = 3
    PUSH_ACK = 4
    PULL_REPLY = 5
    # control
    BARRIER = 20          # rank -> scheduler: arrived (aux = barrier id)
    RELEASE = 21          # scheduler -> rank: barrier aux passed
    DONE = 22             # worker -> scheduler: finished its work
    STOP = 23             # scheduler -> server: shut down
    STOPPED = 24          # server -> scheduler: shut down done
    ABORT = 25            # anyone -> everyone: the job failed (aux: exit code, meta: why)
    REPORT = 26           # rank -> scheduler: progress counters (meta JSON)
    ERROR = 28            # server -> worker: a request was refused (meta: why)
    TASK_REQ = 29         # worker -> scheduler: the next partition (meta: the one done)
    TASK = 30             # scheduler -> worker: a task (meta), or none left (empty)
    PEER_FAILED = 31      # van -> self: rank ``aux`` is gone
    HEARTBEAT = 32        # rank -> scheduler: alive
    RING = 33             # scheduler -> all: new ring (aux = version, meta = dead servers)
    REPL = 34             # owner -> replica: updated rows of a range (aux = range)
    REPL_ACK = 35         # replica -> owner
    SNAPSHOT = 36         # owner -> replica: a whole range (repair)
    SNAPSHOT_ACK = 37     # replica -> owner
    REPAIRED = 38         # server -> scheduler: its ranges have k copies again
    EVENT = 39            # rank -> scheduler: a timestamped event for the log (meta)
    APP = 40              # an app's command (meta: name, id, args; see Postoffice.ask)
    CHECKPOINT = 41       # scheduler -> server: write your ranges (aux = id, meta = folder)
    CHECKPOINTED = 42     # server -> scheduler: written (meta: the file's entry, or error)
    RESUME = 43           # scheduler -> server: load your ranges (meta: manifest)
    LOADED = 44           # server -> scheduler
    PREEMPT = 45          # scheduler -> all: a checkpoint is written, stop now
    BUNDLE = 47           # van -> van: several small messages in one (meta: their images)
    APP_REPLY = 48        # the answer to an APP command (meta: id, args)
    KEYSET = 49           # worker -> server: register a key set (keyset = id, keys: its part)
    KEYSET_DROP = 50      # worker -> server: forget key set ``keyset``
    CHECKPOINT_COPIED = 51  # server -> scheduler: checkpoint ``aux`` copied in memory


# Bits of the header's ``flags`` of kv requests. (RELEASE puts the barrier
# group there instead.)
FLAG_AGGREGATE = 0x100     # sum this push with the other workers' of its task
FLAG_KEYS_CHECKED = 0x200  # the sender checked the keys: sorted and unique
# The keys section holds positions into the server's part of key set
# ``keyset`` (registered by KEYSET), not keys: the server looks nothing up.
FLAG_POSITIONS = 0x400


def task_tag(ts: int | None) -> int:
    """The header ``aux`` of a kv request of task ``ts`` (0: no task)."""
    return 0 if ts is None else ts + 1


def task_of(msg: Message) -> int | None:
    """The task of a kv request (None: untagged)."""
    return msg.aux - 1 if msg.aux > 0 else None


Buffer = np.ndarray | list[np.ndarray] | None


@dataclass
class Message:
    """One request or reply. ``keys``/``vals`` may be lists of pieces to send
    as one contiguous section (segments of several ranges, for instance)."""

    op: int
    table: int = 0
    ts: int = 0
    sender: int = -1
    ring_version: int = 0
    flags: int = 0
    filters: int = 0
    aux: int = 0
    aux2: int = 0
    chunk: int = 0  # which chunk of a large request (kv: duplicates and slot caches)
    keyset: int = 0  # kv: the registered key set a request's positions index (0: none)
    keys: Buffer = None
    vals: Buffer = None
    vdim: int = 0
    meta: bytes = b""
    nbytes: int = field(default=0, compare=False)  # bytes on the wire, set on receive
    bundled: bool = field(default=False, compare=False)  # received inside a BUNDLE
    # Set by the receiver's filters, never sent: the key-cache signature that
    # names this request's key list (its slots are cached under it), or None.
    key_signature: int | None = field(default=None, compare=False)

    def json(self) -> Any:
        return json.loads(self.meta.decode()) if self.meta else None

    @staticmethod
    def jmeta(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


def _pieces(buf: Buffer) -> list[np.ndarray]:
    if buf is None:
        return []
    if isinstance(buf, np.ndarray):
        buf = [buf]
    return [np.ascontiguousarray(b) for b in buf if b.size]


def _pad(n: int) -> int:
    return -n % ALIGN


_PAD = np.zeros(ALIGN, dtype=np.uint8)


def encode(msg: Message) -> list[np.ndarray]:
    """The message as a list of contiguous arrays whose concatenation is the
    wire image. Large arrays are not copied: the van gathers them."""
    keys = _pieces(msg.keys)
    vals = _pieces(msg.vals)
    for k in keys:
        if k.dtype != np.uint64:
            raise TypeError(f"keys must be uint64, got {k.dtype}")
    vcode = 0
    if vals:
        dt = vals[0].dtype.newbyteorder("<") if vals[0].dtype.byteorder == ">" else vals[0].dtype
        if dt not in _VCODE:
            raise TypeError(f"values of dtype {vals[0].dtype} cannot be sent")
        vcode = _VCODE[dt]
    nk = sum(k.nbytes for k in keys)
    nv = sum(v.nbytes for v in vals)
    header = np.frombuffer(_HEADER_STRUCT.pack(
        MAGIC, int(msg.op), msg.flags, msg.table, msg.sender, msg.ring_version, msg.filters,
        msg.ts, msg.vdim, vcode, msg.aux, msg.aux2, msg.chunk, 0, msg.keyset, nk, nv,
        len(msg.meta)),
        dtype=np.uint8)
    parts: list[np.ndarray] = [header]
    for section, size in ((keys, nk), (vals, nv)):
        parts.extend(p.reshape(-1).view(np.uint8) for p in section)
        if _pad(size):
            parts.append(_PAD[: _pad(size)])
    if msg.meta:
        parts.append(np.frombuffer(msg.meta, dtype=np.uint8))
    return parts


def wire_size(header: np.ndarray) -> int:
    """Bytes of the whole message whose header (uint8, HEADER.itemsize) is given."""
    nk, nv, nm = _SIZES.unpack_from(header, _SIZES_OFFSET)
    return HEADER.itemsize + nk + _pad(nk) + nv + _pad(nv) + nm


def mark_split(header: np.ndarray) -> np.ndarray:
    """A copy of an encoded header that says its sections follow as messages
    of their own (the van's split sends)."""
    out = bytearray(header.tobytes())
    struct.pack_into("<i", out, _SPLIT_OFFSET, 1)
    return np.frombuffer(out, dtype=np.uint8)


def is_split(buf: np.ndarray) -> bool:
    """Whether a received buffer is the header of a split message."""
    return buf.size == HEADER.itemsize and struct.unpack_from("<i", buf, _SPLIT_OFFSET)[0] == 1


def encode_bundle(images: list[np.ndarray]) -> np.ndarray:
    """Several encoded small messages (whole wire images, uint8) as the image
    of one BUNDLE message: its meta section is the images, each padded to 8."""
    body = [p for img in images for p in (img, _PAD[: _pad(img.size)])]
    nbytes = sum(p.size for p in body)
    header = np.frombuffer(_HEADER_STRUCT.pack(
        MAGIC, int(Op.BUNDLE), 0, 0, 0, 0, 0, 0, 0, 0, len(images), 0, 0, 0, 0, 0, 0, nbytes),
        dtype=np.uint8)
    return np.concatenate([header, *body])


def is_bundle(buf: np.ndarray) -> bool:
    return buf.size > HEADER.itemsize and struct.unpack_from("<H", buf, 4)[0] == Op.BUNDLE


def split_bundle(buf: np.ndarray) -> list[np.ndarray]:
    """The wire images inside a BUNDLE image (views, no copies)."""
    out = []
    off = HEADER.itemsize
    while off < buf.size:
        size = wire_size(buf[off: off + HEADER.itemsize])
        out.append(buf[off: off + size])
        off += size + _pad(size)
    return out


def decode(buf: np.ndarray, source: int) -> Message:
    """Views into ``buf`` (uint8): keys and values are not copied."""
    if buf.size < HEADER.itemsize:
        raise ValueError(f"message of {buf.size} bytes from rank {source} is shorter "
                         "than a header")
    (magic, op, flags, table, _, ring_version, filters, ts, vdim, vcode, aux, aux2, chunk,
     _, keyset, nk, nv, nm) = _HEADER_STRUCT.unpack_from(buf)
    if magic != MAGIC:
        raise ValueError(f"message from rank {source} has a bad magic number")
    off = HEADER.itemsize
    keys = buf[off: off + nk].view(np.uint64)
    off += nk + _pad(nk)
    vals = None
    if nv:
        vals = buf[off: off + nv].view(VALUE_DTYPES[vcode])
        if vdim > 0:
            vals = vals.reshape(-1, vdim)
    off += nv + _pad(nv)
    meta = buf[off: off + nm].tobytes() if nm else b""
    return Message(op=op, table=table, ts=ts, sender=source, ring_version=ring_version,
                   flags=flags, filters=filters, aux=aux, aux2=aux2, chunk=chunk,
                   keyset=keyset, keys=keys, vals=vals, vdim=vdim, meta=meta, nbytes=int(buf.size))
