"""Where data sets live: local folders, or any fsspec URL (``s3://``,
``gs://``, ``hdfs://``, ``file://``...).

A URL is opened through fsspec and the protocol's own package (s3fs for
``s3://``, gcsfs, pyarrow for ``hdfs://``): an optional extra, imported only
when a URL is used. Endpoints and credentials come from where those packages
look (``AWS_*`` variables, ``~/.aws``, fsspec's ``FSSPEC_S3_ENDPOINT_URL``...),
so every rank of a job finds the same store. HDF5 partitions are read through
a file object in byte ranges: a job never copies a whole data set first.
Writes go to a local file first and are uploaded once complete, so a store
never holds a partial partition under its final name.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# a few block sizes per chunk of rows: HDF5 reads a chunk at a time
READ_BLOCK = 4 << 20

PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hdfs": "pyarrow",
            "abfs": "adlfs", "az": "adlfs", "http": "aiohttp", "https": "aiohttp"}


class StorageError(OSError):
    """A URL that cannot be served: no fsspec, no package for its protocol."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a store by URL (``file://`` counts as local)."""
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def local(path: str | os.PathLike) -> str:
    """A local path (``file://`` stripped)."""
    text = os.fspath(path)
    return text[len("file://"):] if text.startswith("file://") else text


def join(folder: str | os.PathLike, name: str) -> str:
    """``folder/name`` for a local folder or a URL."""
    folder = os.fspath(folder)
    return posixpath.join(folder, name) if is_url(folder) else str(Path(local(folder)) / name)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of ``url``."""
    protocol = url.split("://", 1)[0]
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"{url}: reading URLs needs fsspec and "
                           f"{PACKAGES.get(protocol, 'the package for ' + protocol + '://')} "
                           "(pip install 'mpips[s3]' for s3://)") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        package = PACKAGES.get(protocol)
        hint = f"pip install {package}" if package else f"no fsspec filesystem for {protocol}://"
        raise StorageError(f"{url}: {hint} ({e})") from None


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(local(path))
    fs, p = filesystem(path)
    return fs.exists(p)


def is_dir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(local(path))
    fs, p = filesystem(path)
    return fs.isdir(p)


def is_file(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(local(path))
    fs, p = filesystem(path)
    return fs.isfile(p)


def listing(folder: str) -> list[tuple[str, bool]]:
    """(full path, is a folder) of each entry of ``folder``, sorted by name."""
    if not is_url(folder):
        return sorted(((e.path, e.is_dir()) for e in os.scandir(local(folder))),
                      key=lambda x: x[0])
    fs, p = filesystem(folder)
    protocol = folder.split("://", 1)[0]
    out = []
    for info in fs.ls(p, detail=True):
        name = info["name"].rstrip("/")
        if name == p.rstrip("/"):
            continue  # some stores list the folder itself
        out.append((f"{protocol}://{name}", info["type"] == "directory"))
    return sorted(out)


def open_binary(path: str) -> IO[bytes]:
    """A file object reading ``path`` (local, or a URL in byte ranges)."""
    if not is_url(path):
        return open(local(path), "rb")
    fs, p = filesystem(path)
    return fs.open(p, "rb", block_size=READ_BLOCK, cache_type="readahead")


def read_text(path: str) -> str:
    with open_binary(path) as f:
        return f.read().decode()


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(local(path))
    fs, p = filesystem(path)
    return int(fs.size(p))


def make_dirs(folder: str) -> None:
    if is_url(folder):
        fs, p = filesystem(folder)
        fs.makedirs(p, exist_ok=True)  # most object stores have no folders: a no-op
    else:
        os.makedirs(local(folder), exist_ok=True)


def upload(source: str | os.PathLike, url: str) -> None:
    """Copy the finished local file ``source`` to ``url``."""
    fs, p = filesystem(url)
    fs.put_file(os.fspath(source), p)


def remove_tree(path: str) -> None:
    if is_url(path):
        fs, p = filesystem(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)
    else:
        shutil.rmtree(local(path), ignore_errors=True)


@contextmanager
def staging(folder: str) -> Iterator[str]:
    """A local folder to write a data set into: ``folder`` itself when it
    is local; for a URL a temporary one, whose files the caller uploads
    (:func:`upload`) and which is removed at the end."""
    if not is_url(folder):
        yield local(folder)
        return
    temp = tempfile.mkdtemp(prefix="mpips-stage-")
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)
