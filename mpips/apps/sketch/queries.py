"""Queries of a count-min sketch job.

Queries. While the job runs, worker 0 polls ``OUTPUT/queries`` every
``query_poll`` s for ``*.query.json`` files and writes ``*.answer.json`` next
to them: point estimates by pulls, heavy hitters by asking every server for
its re-estimated candidates (``Op.APP``). At the end each server saves its part
to ``OUTPUT/sketch/server-<i>.h5`` and the scheduler writes
``OUTPUT/sketch/index.json``; :func:`query` answers from those once they exist.
``python -m mpips query --job-output OUTPUT ...`` does either.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...keys import fnv1a64, hash_feature
from ...kv.worker import KVWorker
from ...postoffice import Command, Postoffice
from .store import INDEX_NAME, CountMinStore, SavedSketch, merge_top, unmix64

TOP = "sketch.top"  # command: a server's heavy-hitter candidates re-estimated


MAX_ITEMS = 1_000_000  # points one query may ask for
MAX_TOP = 100_000      # heavy hitters one query may ask for
MAX_QUERY_BYTES = 64 << 20
QUERY_FIELDS = ("ids", "strings", "keys", "top", "fraction")


def _ints(value: Any, name: str, lo: int, hi: int) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {type(value).__name__}")
    bad = next((v for v in value if isinstance(v, bool) or not isinstance(v, int)
                or not lo <= v < hi), None)
    if bad is not None:
        raise ValueError(f"{name}: {bad!r} is not an integer in [{lo}, {hi})")
    return value


def check_query(query: Any) -> dict[str, Any]:
    """The query with every field checked; ValueError names what is wrong.
    ``ids`` integers in [0, 2^63), ``strings`` strings, ``keys`` integers in
    [0, 2^64), ``top`` an integer in [0, MAX_TOP], ``fraction`` in [0, 1]."""
    if not isinstance(query, dict):
        raise ValueError(f"a query is a JSON object, got {type(query).__name__}")
    unknown = sorted(set(query) - set(QUERY_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} (known: {', '.join(QUERY_FIELDS)})")
    out = {"ids": _ints(query.get("ids", []), "ids", 0, 1 << 63),
           "keys": _ints(query.get("keys", []), "keys", 0, 1 << 64)}
    strings = query.get("strings", [])
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise ValueError("strings must be a list of strings")
    out["strings"] = strings
    if len(out["ids"]) + len(strings) + len(out["keys"]) > MAX_ITEMS:
        raise ValueError(f"more than {MAX_ITEMS} items in one query")
    top = query.get("top", 0)
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
        raise ValueError(f"top must be an integer in [0, {MAX_TOP}], got {top!r}")
    fraction = query.get("fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    out.update(top=top, fraction=float(fraction))
    return out


def query_keys(query: dict[str, Any]) -> tuple[list[Any], np.ndarray]:
    """The items a checked query (:func:`check_query`) names and their keys:
    ``ids`` (integers, hashed as the job hashes them), ``strings`` (FNV-1a 64,
    then hashed) or raw ``keys``."""
    items: list[Any] = []
    keys = [np.empty(0, np.uint64)]
    if query.get("ids"):
        items += list(query["ids"])
        keys.append(hash_feature(np.asarray(query["ids"], dtype=np.int64)))
    if query.get("strings"):
        items += list(query["strings"])
        keys.append(hash_feature(fnv1a64(np.array([s.encode() for s in query["strings"]]))))
    if query.get("keys"):
        items += list(query["keys"])
        keys.append(np.asarray([int(k) for k in query["keys"]], dtype=np.uint64))
    return items, np.concatenate(keys)


def make_answer(query: dict[str, Any], items: list[Any], keys: np.ndarray,
                estimates: np.ndarray, top_keys: np.ndarray, top_est: np.ndarray,
                total: int, epsilon: float, source: str) -> dict[str, Any]:
    fraction = float(query.get("fraction", 0.0))
    keep = top_est >= fraction * total
    return {
        "source": source, "total": int(total), "epsilon": epsilon,
        "error_bound": epsilon * total,
        "points": [{"item": it, "key": int(k), "estimate": int(e)}
                   for it, k, e in zip(items, keys.tolist(), estimates.tolist(), strict=True)],
        # ``id`` inverts the integer-id hash; for string items it is their FNV-1a 64.
        "top": [{"key": int(k), "id": int(i), "estimate": int(e)} for k, i, e in
                zip(top_keys[keep].tolist(), unmix64(top_keys[keep]).tolist(),
                    top_est[keep].tolist(), strict=True)],
    }


def answer_saved(sketch_dir: str | Path, query: dict[str, Any]) -> dict[str, Any]:
    """Answer a query from a finished job's saved sketch."""
    query = check_query(query)
    saved = SavedSketch(sketch_dir)
    items, keys = query_keys(query)
    est = saved.estimate(keys)
    tk, te = saved.top(query["top"])
    return make_answer(query, items, keys, est, tk, te, saved.total,
                       saved.index["epsilon"], "saved")


def query(job_output: str | Path, q: dict[str, Any], timeout: float = 30.0,
          poll: float = 0.05) -> dict[str, Any]:
    """Ask a running job (through ``OUTPUT/queries``) or a finished one (its
    saved sketch). Raises TimeoutError naming the folder if nobody answers."""
    out = Path(job_output)
    sketch_dir = out / "sketch"
    if (sketch_dir / INDEX_NAME).exists():
        return answer_saved(sketch_dir, q)
    qdir = out / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    write_json_atomic(qdir / f"{name}.query.json", q)
    answer = qdir / f"{name}.answer.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer.exists():
            result = json.loads(answer.read_text())
            answer.unlink(missing_ok=True)
            return result
        if (sketch_dir / INDEX_NAME).exists():
            (qdir / f"{name}.query.json").unlink(missing_ok=True)
            return answer_saved(sketch_dir, q)
        time.sleep(poll)
    (qdir / f"{name}.query.json").unlink(missing_ok=True)
    raise TimeoutError(f"no answer within {timeout:g} s from a job writing to {out}: no "
                       f"running sketch job polls {qdir} and {sketch_dir / INDEX_NAME} "
                       "does not exist")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as ``path`` at once: a new file made in the same folder
    (O_EXCL: never one planted there), then renamed over ``path`` (a symlink
    at ``path`` is replaced, not followed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_query_file(path: Path) -> Any:
    """A query file's JSON, if it is a regular file (not a symlink, FIFO or
    folder, which are refused without opening them for reading)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > MAX_QUERY_BYTES:
        raise ValueError(f"larger than {MAX_QUERY_BYTES} bytes")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = f.read(MAX_QUERY_BYTES + 1)
    return json.loads(data)


class LiveQueries:
    """Worker 0's side of the query folder."""

    def __init__(self, po: Postoffice, kv: KVWorker, folder: Path, interval: float,
                 epsilon: float):
        self.po, self.kv, self.folder = po, kv, folder
        self.interval, self.epsilon = interval, epsilon
        self.next_look = 0.0
        self.answered = 0
        self.refused: set[str] = set()

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_look:
            return
        self.next_look = now + self.interval
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.endswith(".query.json"))
        except FileNotFoundError:
            return
        for name in names:
            if name in self.refused:
                continue
            path = self.folder / name
            try:
                result = self.answer(read_query_file(path))
            except (ValueError, OSError) as e:  # answered with the reason, job goes on
                result = {"error": f"{name}: {e}"}
            write_json_atomic(self.folder / name.replace(".query.json", ".answer.json"),
                              result)
            try:
                path.unlink()
            except IsADirectoryError:
                self.refused.add(name)  # a folder stays: refuse it once
            except FileNotFoundError:
                pass
            self.answered += 1

    def answer(self, q: dict[str, Any]) -> dict[str, Any]:
        q = check_query(q)
        items, keys = query_keys(q)
        order = np.argsort(keys, kind="stable")
        uniq, inverse = np.unique(keys[order], return_inverse=True)
        est_sorted = self.kv.wait(self.kv.pull(uniq))[:, 0] if uniq.size else \
            np.empty(0, np.int64)
        est = np.empty(keys.size, np.int64)
        est[order] = est_sorted[inverse]
        k = q["top"]
        answers = self.po.ask(self.po.layout.servers, Command(TOP, {"k": k}))
        tk, te = merge_top([np.empty(0, np.uint64) if a.keys is None else a.keys
                            for a in answers],
                           [np.zeros(0, np.int64) if a.vals is None else a.vals.reshape(-1)
                            for a in answers], k)
        total = sum(a.args["total"] for a in answers)
        return make_answer(q, items, keys, est, tk, te, total, self.epsilon, "live")


def serve_top(po: Postoffice, stores: Callable[[], list[CountMinStore]]) -> None:
    """On a server: answer TOP with the candidates of the ranges it owns now."""
    def top(asked: Command) -> Command:
        k = int(asked.args["k"])
        parts = stores()
        tops = [s.top(k) for s in parts]
        keys, est = merge_top([t[0] for t in tops], [t[1] for t in tops], k)
        return Command(TOP, {"total": sum(s.total for s in parts)}, keys, est.reshape(-1, 1))

    po.on_command(TOP, top)
