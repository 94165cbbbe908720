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
import io
import posixpath
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from data_tools.errors import DataError
from mpips.data import storage

DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB of text: the vectorised parser is fastest in cache
# The longest line read: a line is parsed whole, and parsing takes about 35
# times its size in memory. 16 MiB holds a row of over a million features.
DEFAULT_MAX_LINE_BYTES = 1 << 24


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
        try:
            if storage.is_file(path):
                found.append(path)
            elif storage.is_dir(path):
                found.extend(_walk(path))
            else:
                raise DataError(f"{path}: no such file or directory")
        except storage.StorageError as e:
            raise DataError(str(e)) from None
    return found


def _walk(folder: str) -> Iterator[str]:
    for path, is_dir in storage.listing(folder):
        if not is_data_name(posixpath.basename(path)):
            continue
        if is_dir:
            yield from _walk(path)
        else:
            yield path



class _Decompressed(io.BufferedReader):
    """A gzip or bzip2 reader that also closes the file under it."""

    def __init__(self, inner: BinaryIO, raw: BinaryIO):
        super().__init__(inner)  # type: ignore[arg-type]
        self._under = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._under.close()


def open_binary(path: str) -> BinaryIO:
    """Open a plain, gzip or bzip2 file (local or a URL) by its magic bytes,
    not its name."""
    try:
        raw = storage.open_binary(path)
        magic = raw.read(3)
        raw.seek(0)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic[:2] == b"\x1f\x8b":
        return _Decompressed(gzip.GzipFile(fileobj=raw, mode="rb"), raw)  # type: ignore
    if magic == b"BZh":
        return _Decompressed(bz2.BZ2File(raw, "rb"), raw)  # type: ignore
    name = path.lower()
    if name.endswith((".gz", ".gzip", ".bz2")):
        raw.close()
        kind = "bzip2" if name.endswith(".bz2") else "gzip"
        raise DataError(f"{path}: named as {kind} data but is not {kind} (it starts with "
                        f"{magic!r}): a truncated download, or a misnamed file?")
    return raw


@dataclass
class TextChunk:
    """Whole lines of one file; ``first_line`` is the 1-based number of the first."""

    data: bytes
    first_line: int
    source: str


def read_chunks(path: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[TextChunk]:
    """Stream a text file as chunks of complete lines (about ``chunk_bytes`` each).

    Memory stays at a few chunks whatever the file size: a line longer than
    ``max_line_bytes`` raises :class:`DataError` naming file and line (before
    it is read whole), and so does a truncated or corrupt compressed file.
    """
    line = 1
    carry: list[bytes] = []  # the start of a line longer than the blocks read so far
    carried = 0
    first = True
    with open_binary(path) as stream:
        while True:
            try:
                block = stream.read(chunk_bytes)
            except (EOFError, OSError, zlib.error) as e:
                raise DataError(f"{path}: cannot decompress after line {line - 1} "
                                f"(truncated or corrupt file?): {e}") from None
            if not block:
                break
            if first:  # a UTF-8 byte order mark (Windows tools write one) is not data
                first = False
                block = block.removeprefix(b"\xef\xbb\xbf")
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # no line ends in this block: keep its bytes, read on
                carry.append(block)
                carried += len(block)
                if carried > max_line_bytes:
                    raise DataError(f"{path}:{line}: line longer than {max_line_bytes} bytes "
                                    "(--max-line-bytes)")
                continue
            if carried + block.find(b"\n") > max_line_bytes:
                raise DataError(f"{path}:{line}: line longer than {max_line_bytes} bytes "
                                "(--max-line-bytes)")
            data = b"".join([*carry, block[:cut]]) if carry else block[:cut]
            carry, carried = [block[cut:]], len(block) - cut
            yield TextChunk(data, line, path)
            line += data.count(b"\n")
    if carried:
        yield TextChunk(b"".join(carry) + b"\n", line, path)
