"""Streams of (item key, count) records for the count-min sketch app.

A source yields :class:`Batch` es: item keys (uint64, already hashed with
:func:`mpips.keys.hash_feature`, in stream order, duplicates allowed), their
counts (None: 1 each), and how many records they came from. A source may yield
``None`` to say "nothing arrived yet": the worker then answers queries and
reports progress instead of blocking.

Sources (``[sketch] source``):

* ``zipf``: a seeded synthetic stream of Zipf(``zipf_s``) ids over
  ``zipf_universe`` ids, with optional bursts (a fresh id takes
  ``burst_share`` of the items in the first ``burst_length`` of every
  ``burst_period`` items). A pool of ``zipf_pool`` items is drawn once and
  replayed (drawing costs more than sketching, so the benchmark measures the
  sketch, not the RNG); :func:`zipf_counts` gives the exact counts.
* ``news20``: the word ids of a UCI bag-of-words ``docword`` file (``doc word
  count`` lines, after 3 header lines; gzip or plain) as (word id, count)
  records, ``repeat`` passes; worker ``w`` of ``W`` takes lines ``w, w+W, ...``.
* ``stdin`` / ``file`` (a file or FIFO at ``path``): text lines ``item`` or
  ``item count`` (``text_counts``); items are integers (``item_type = "int"``,
  keys ``hash_feature(id)``) or strings (``"string"``, keys
  ``hash_feature(fnv1a64(utf-8 bytes))``). Only worker 0 reads it: under
  mpiexec stdin reaches one rank, so start ``mpiexec --stdin R`` with R the
  rank of worker 0 (``1 + servers``); other workers end at once. End of file
  ends the stream.
* ``dir``: a folder where part files (``part-*``, plain or .gz, same text
  format) keep arriving; worker ``w`` takes the files whose CRC-32 of the name
  is ``w`` mod W, each once. The stream ends when ``_SUCCESS`` appears (after a
  last scan) or after ``idle_timeout`` s without a new file. Writers must move
  finished files into place (rename), as Hadoop and Spark do.
* ``hdf5``: a converted data set (``data_tools``) replayed as a stream: every
  nonzero of every row is one item (its key as stored); partitions come from
  the scheduler's work queue.
"""

from __future__ import annotations

import gzip
import os
import select
import stat
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpips.keys import fnv1a64

from ...keys import hash_feature, mix64


@dataclass
class Batch:
    keys: np.ndarray            # uint64 item keys, stream order, duplicates allowed
    counts: np.ndarray | None   # int64 per key, or None for 1 each
    records: int                # records (lines, items) this batch came from


def aggregate(keys: np.ndarray, counts: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and their summed counts: one sort, no Python loop."""
    if keys.size == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    if counts is None:
        s = np.sort(keys)
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        sums = np.diff(np.append(starts, s.size))
        return s[starts], sums.astype(np.int64, copy=False)
    order = np.argsort(keys, kind="stable")
    s = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    return s[starts], np.add.reduceat(counts[order].astype(np.int64, copy=False), starts)


# ---- Zipf ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ZipfSpec:
    items: int              # items per worker
    s: float = 1.1
    universe: int = 1_000_000
    pool: int = 1 << 22
    burst_period: int = 0   # 0: no bursts
    burst_length: int = 0
    burst_share: float = 0.0
    seed: int = 0


def zipf_pool(spec: ZipfSpec, worker: int) -> np.ndarray:
    """The ids a worker replays: inverse-CDF draws of ranks 1..universe (int64)."""
    rng = np.random.default_rng([spec.seed, 7, worker])
    weights = np.arange(1, spec.universe + 1, dtype=np.float64) ** -spec.s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    n = min(spec.pool, spec.items)
    ids = np.searchsorted(cdf, rng.random(n), side="right") + 1
    return np.minimum(ids, spec.universe).astype(np.int64)


def zipf_ids(spec: ZipfSpec, worker: int, pool: np.ndarray, start: int, stop: int
             ) -> np.ndarray:
    """Ids at stream positions [start, stop) of a worker: the pool replayed,
    with burst ids laid over (deterministic functions of the position)."""
    pos = np.arange(start, stop, dtype=np.int64)
    ids = pool[pos % pool.size]
    if spec.burst_period and spec.burst_share > 0:
        in_burst = (pos % spec.burst_period) < spec.burst_length
        coin = (mix64(pos.astype(np.uint64) ^ np.uint64(worker << 40)) & np.uint64(0xFFFF)) \
            < np.uint64(int(spec.burst_share * 65536))
        hit = in_burst & coin
        # One fresh id per burst, shared by all workers: a key that suddenly turns hot.
        ids = np.where(hit, spec.universe + 1 + pos // spec.burst_period, ids)
    return ids


def zipf_stream(spec: ZipfSpec, worker: int, batch: int) -> Iterator[Batch]:
    """The same items as :func:`zipf_ids`, hashed batch by batch (as a real
    stream must be); burst ids are laid over only inside burst windows."""
    pool = zipf_pool(spec, worker)
    bursty = spec.burst_period and spec.burst_share > 0
    for a in range(0, spec.items, batch):
        b = min(spec.items, a + batch)
        lo, hi = a % pool.size, a % pool.size + (b - a)
        ids = pool[lo:hi] if hi <= pool.size else pool[np.arange(a, b) % pool.size]
        keys = hash_feature(ids)
        if bursty:
            first = a // spec.burst_period
            for p in range(first, (b - 1) // spec.burst_period + 1):  # bursts, not items
                w0 = max(a, p * spec.burst_period)
                w1 = min(b, p * spec.burst_period + spec.burst_length)
                if w1 > w0:
                    keys[w0 - a:w1 - a] = hash_feature(zipf_ids(spec, worker, pool, w0, w1))
        yield Batch(keys, None, b - a)


def zipf_counts(spec: ZipfSpec, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact (sorted unique ids, counts) of the whole stream of ``workers`` workers."""
    parts = []
    for w in range(workers):
        pool = zipf_pool(spec, w)
        parts.append(zipf_ids(spec, w, pool, 0, spec.items))
    return np.unique(np.concatenate(parts), return_counts=True)


# ---- news20 bag of words ---------------------------------------------------------------
def read_docword(path: str | Path) -> np.ndarray:
    """(nnz, 3) int64 ``doc word count`` rows of a UCI docword file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the docword file: {e}") from None
    nums = _parse_ints(raw, str(path))
    if nums.size < 3:
        raise ValueError(f"{path}: no docword header (docs, words, nnz)")
    nnz = int(nums[2])
    body = nums[3:]
    if body.size != 3 * nnz:
        raise ValueError(f"{path}: header says {nnz} (doc word count) lines, found "
                         f"{body.size / 3:g}")
    return body.reshape(nnz, 3)


def news20_stream(path: str | Path, worker: int, workers: int, batch: int,
                  repeat: int = 1) -> Iterator[Batch]:
    rows = read_docword(path)[worker::workers]
    keys = hash_feature(rows[:, 1])
    counts = rows[:, 2].copy()
    for _ in range(repeat):
        for a in range(0, keys.size, batch):
            yield Batch(keys[a:a + batch], counts[a:a + batch], min(batch, keys.size - a))


# ---- text lines (stdin, file, FIFO, part files) ---------------------------------------------
def _parse_ints(raw: bytes, where: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return np.fromstring(raw, dtype=np.int64, sep=" ")  # whitespace-separated
        except (DeprecationWarning, ValueError):
            pass
    # Find the offending line for the message (the slow path runs only on errors).
    for i, line in enumerate(raw.split(b"\n")):
        for tok in line.split():
            try:
                int(tok)
            except ValueError:
                raise ValueError(f"{where}: line {i + 1}: {tok[:40]!r} is not an integer") \
                    from None
    raise ValueError(f"{where}: cannot parse integers")


def parse_lines(raw: bytes, item_type: str, with_counts: bool, where: str) -> Batch:
    """Complete text lines -> a batch. ``item [count]`` per line."""
    if item_type == "int":
        nums = _parse_ints(raw, where)
        per = 2 if with_counts else 1
        if nums.size % per:
            raise ValueError(f"{where}: {nums.size} numbers do not make 'item count' pairs")
        if nums.size and nums[::per].min() < 0:
            raise ValueError(f"{where}: negative item id {int(nums[::per].min())}")
        keys = hash_feature(nums[::per])
        counts = nums[1::2].copy() if with_counts else None
    else:
        toks = raw.split() if with_counts else [ln for ln in raw.split(b"\n") if ln.strip()]
        if with_counts:
            if len(toks) % 2:
                raise ValueError(f"{where}: {len(toks)} tokens do not make 'item count' pairs")
            items = np.array(toks[0::2], dtype=bytes)
            counts = _parse_ints(b" ".join(toks[1::2]), where)
        else:
            items = np.array([t.strip() for t in toks], dtype=bytes) if toks \
                else np.empty(0, "S1")
            counts = None
        keys = hash_feature(fnv1a64(items)) if items.size else np.empty(0, np.uint64)
    if counts is not None and counts.size and counts.min() < 0:
        raise ValueError(f"{where}: negative count {int(counts.min())}")
    return Batch(keys, counts, int(keys.size))


def check_stdin(rank: int) -> None:
    """Refuse a stdin that is /dev/null (mpiexec gave stdin to another rank)."""
    st = os.fstat(0)
    null = os.stat(os.devnull)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev:
        raise ValueError(f"[sketch] source = 'stdin', but stdin of rank {rank} (worker 0) "
                         f"is {os.devnull}: start the job with `mpiexec --stdin {rank} ...`")


def text_stream(fd: int, item_type: str, with_counts: bool, where: str,
                block: int = 1 << 22, poll: float = 0.2) -> Iterator[Batch | None]:
    """Batches from a file descriptor (stdin, file, FIFO) until end of file.

    Reads with ``select`` so that a quiet stream yields None every ``poll``
    seconds; a partial last line waits for the next read."""
    rest = b""
    while True:
        ready, _, _ = select.select([fd], [], [], poll)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, block)
        if not chunk:
            if rest.strip():
                yield parse_lines(rest, item_type, with_counts, where)
            return
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield parse_lines(data[:cut], item_type, with_counts, where)


def dir_stream(folder: str | Path, worker: int, workers: int, item_type: str,
               with_counts: bool, idle_timeout: float, poll: float = 0.2
               ) -> Iterator[Batch | None]:
    """Part files of a folder that keeps growing, until _SUCCESS or idle."""
    folder = Path(folder)
    seen: set[str] = set()
    last_new = time.monotonic()
    while True:
        finished = (folder / "_SUCCESS").exists()  # look before the scan: no file is missed
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            names = []
        new = [n for n in names if n.startswith("part-") and n not in seen
               and zlib.crc32(n.encode()) % workers == worker]
        for name in new:
            seen.add(name)
            path = folder / name
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                raw = f.read()
            yield parse_lines(raw, item_type, with_counts, str(path))
        if new:
            last_new = time.monotonic()
            continue
        if finished or time.monotonic() - last_new > idle_timeout:
            return
        yield None
        time.sleep(poll)


def hdf5_batches(paths: list[str], batch_rows: int,
                 expected: list | None = None) -> Iterator[Batch]:
    """Every nonzero of a converted partition is one item (its stored key);
    ``expected``: the partitions' manifest entries, checked as each opens."""
    from ...data import read_minibatches
    for mb in read_minibatches(paths, batch_rows, expected=expected):
        yield Batch(mb.keys, None, mb.nnz)
