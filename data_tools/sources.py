"""Finding the input files of an export and reading them in chunks of lines.

A Hadoop or Spark export is a directory of ``part-*`` files (plain, gzip or
bzip2), ``_SUCCESS`` markers, ``.crc`` side files and maybe nested partition
folders such as ``dt=2026-11-01/``. :func:`find_inputs` lists the data files in
a stable order (sorted path components, depth first), so every rank and every
run sees the same file list.
"""

from __future__ import annotations

import bz2
import gzip
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from data_tools.errors import DataError

DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB of text: the vectorised parser is fastest in cache


def is_data_name(name: str) -> bool:
    """False for markers, checksums and hidden or temporary entries."""
    return not (name.startswith((".", "_")) or name.endswith(".crc"))


def find_inputs(paths: Sequence[str]) -> list[str]:
    """Data files under ``paths`` (files or directories) in a stable order.

    Files named explicitly are kept even if they look like markers; inside
    directories, entries starting with ``.`` or ``_`` and ``*.crc`` files are
    skipped.
    """
    found: list[str] = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            found.extend(_walk(path))
        else:
            raise DataError(f"{path}: no such file or directory")
    return found


def _walk(folder: str) -> Iterator[str]:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not is_data_name(entry.name):
            continue
        if entry.is_dir():
            yield from _walk(entry.path)
        elif entry.is_file():
            yield entry.path


def open_binary(path: str) -> BinaryIO:
    """Open a plain, gzip or bzip2 file by its magic bytes (not its name)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(3)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if magic == b"BZh":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


@dataclass
class TextChunk:
    """Whole lines of one file; ``first_line`` is the 1-based number of the first."""

    data: bytes
    first_line: int
    source: str


def read_chunks(path: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[TextChunk]:
    """Stream a text file as chunks of complete lines (about ``chunk_bytes`` each).

    Memory stays at a few chunks whatever the file size. A truncated or corrupt
    compressed file raises :class:`DataError` naming the file.
    """
    line = 1
    carry = b""
    with open_binary(path) as stream:
        while True:
            try:
                block = stream.read(chunk_bytes)
            except (EOFError, OSError, zlib.error) as e:
                raise DataError(f"{path}: cannot decompress after line {line - 1} "
                                f"(truncated or corrupt file?): {e}") from None
            if not block:
                break
            if carry:
                block = carry + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # one line longer than the chunk: keep reading
                carry = block
                continue
            data, carry = block[:cut], block[cut:]
            yield TextChunk(data, line, path)
            line += data.count(b"\n")
    if carry:
        yield TextChunk(carry + b"\n", line, path)
