"""Streaming count-min sketch: workers push (item key, count) increments,
servers hold count-min rows for the keys of their ring ranges.

Data path. A worker reads a stream (:mod:`mpips.apps.sketch_stream`: Zipf
generator, news20 words, stdin / file / FIFO, a folder of arriving part files,
or HDF5 partitions), hashes item ids with :func:`mpips.keys.hash_feature`
(strings: FNV-1a 64 first), aggregates duplicates of a batch worker-side (one
sort: sorted unique keys and summed counts), and pushes them to table
``cms`` (int64, vdim 1) with at most ``max_inflight`` pushes outstanding.
Each server's table is a :class:`~mpips.apps.sketch_store.CountMinStore`:
``depth x width`` int64 counters from ``epsilon``/``delta``, plain or
conservative update, and a vectorised heavy-hitter candidate set. Pulls return
estimates, so point queries are ordinary kv pulls.

Stdin. Under Open MPI 5, mpiexec forwards stdin to one rank (``--stdin R``)
but never delivers end of file (open-mpi/ompi#12777 and related), so a stream
on mpiexec's stdin cannot end. ``jobs/sketch_stdin.sh`` therefore copies its
own stdin into a FIFO that worker 0 reads (``source = "file"``): end of the
input ends the job cleanly. ``source = "stdin"`` reads fd 0 of worker 0 for an
MPI that forwards EOF, with ``idle_timeout`` as a way out.

Queries. While the job runs, worker 0 polls ``OUTPUT/queries`` every
``query_poll`` s for ``*.query.json`` files and writes ``*.answer.json`` next
to them: point estimates by pulls, heavy hitters by asking every server for
its re-estimated candidates (``Op.APP``). At the end each server saves its part
to ``OUTPUT/sketch/server-<i>.h5`` and the scheduler writes
``OUTPUT/sketch/index.json``; :func:`query` answers from those once they exist.
``python -m mpips query --job-output OUTPUT ...`` does either.

Throughput is reported as inserts (stream records) per second: every worker
times its stream loop from a common start (a barrier after sources are ready)
to its last acknowledged push; the job rate is all records over the slowest
worker's time. Per-stage seconds (read+hash, aggregate, push, wait) and the
servers' update seconds say where the time goes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..app import App, Table
from ..config import ConfigError, Option, non_negative, positive, section
from ..keys import hash_feature
from ..kv.handles import Add
from ..kv.worker import KVWorker
from ..postoffice import WORKERS, Postoffice
from ..transport import Message, Op
from .sketch_store import INDEX_NAME, CountMinStore, SavedSketch, SketchParams, merge_top, unmix64
from .sketch_stream import (
    Batch,
    ZipfSpec,
    aggregate,
    check_stdin,
    dir_stream,
    hdf5_batches,
    news20_stream,
    text_stream,
    zipf_stream,
)

SOURCES = ("zipf", "news20", "stdin", "file", "dir", "hdf5")


def _fraction(v: float) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


section("sketch", {
    "epsilon": Option(float, 1e-4, "error bound: estimates exceed true counts by at most "
                      "epsilon * N with probability 1 - delta", _fraction),
    "delta": Option(float, 0.01, "failure probability of the bound", _fraction),
    "conservative": Option(bool, False, "conservative update (smaller overestimates)"),
    "candidates": Option(int, 1024, "heavy-hitter candidates kept per server", non_negative),
    "source": Option(str, "zipf", "the stream", choices=SOURCES),
    "path": Option(str, "", "file/FIFO (file), folder (dir), docword file (news20), "
                   "converted data set (hdf5)"),
    "item_type": Option(str, "int", "text items: integer ids or strings",
                        choices=("int", "string")),
    "text_counts": Option(bool, False, "text lines are 'item count' instead of 'item'"),
    "idle_timeout": Option(float, 0.0, "end a stdin/file/dir stream after this many "
                           "seconds without data (0: never; dir also ends at _SUCCESS)",
                           non_negative),
    "batch": Option(int, 1 << 20, "items aggregated per push", positive),
    "max_inflight": Option(int, 4, "pushes a worker keeps outstanding", positive),
    "repeat": Option(int, 1, "passes over a news20/hdf5 source", positive),
    "zipf_items": Option(int, 10_000_000, "Zipf items per worker", non_negative),
    "zipf_s": Option(float, 1.1, "Zipf exponent", positive),
    "zipf_universe": Option(int, 1_000_000, "distinct Zipf ids", positive),
    "zipf_pool": Option(int, 1 << 22, "Zipf ids drawn per worker, then replayed", positive),
    "burst_period": Option(int, 0, "items between bursts (0: no bursts)", non_negative),
    "burst_length": Option(int, 0, "items a burst lasts", non_negative),
    "burst_share": Option(float, 0.0, "share of a burst's items that are its hot id",
                          non_negative),
    "top": Option(int, 20, "heavy hitters printed at the end", non_negative),
    "query_poll": Option(float, 0.5, "seconds between worker 0's looks at OUTPUT/queries",
                         positive),
    "report_interval": Option(float, 1.0, "seconds between worker progress reports",
                              positive),
})

APP_TOP, APP_TOP_REPLY = 1, 2


def sketch_params(cfg) -> SketchParams:
    sc = cfg.sketch
    return SketchParams(sc.epsilon, sc.delta, cfg.job.seed, sc.conservative, sc.candidates)


# ---- queries (shared by the live worker and the saved sketch) ---------------------------
def query_keys(query: dict[str, Any]) -> tuple[list[Any], np.ndarray]:
    """The items a query names and their keys: ``ids`` (integers, hashed as the
    job hashes them), ``strings`` (FNV-1a 64, then hashed) or raw ``keys``."""
    from mpips.keys import fnv1a64
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
    saved = SavedSketch(sketch_dir)
    items, keys = query_keys(query)
    est = saved.estimate(keys)
    tk, te = saved.top(int(query.get("top", 0)))
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
    _write_json_atomic(qdir / f"{name}.query.json", q)
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


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


class _LiveQueries:
    """Worker 0's side of the query folder."""

    def __init__(self, po: Postoffice, kv: KVWorker, folder: Path, interval: float,
                 epsilon: float):
        self.po, self.kv, self.folder = po, kv, folder
        self.interval, self.epsilon = interval, epsilon
        self.next_look = 0.0
        self.replies: list[Message] = []
        self.answered = 0
        po.on(Op.APP, self._reply)

    def _reply(self, msg: Message) -> None:
        if msg.aux != APP_TOP_REPLY:
            raise RuntimeError(f"unexpected app message {msg.aux} from rank {msg.sender}")
        self.replies.append(msg)

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
            path = self.folder / name
            try:
                q = json.loads(path.read_text())
                result = self.answer(q)
            except (ValueError, TypeError, OSError) as e:
                result = {"error": f"{name}: {e}"}
            _write_json_atomic(self.folder / name.replace(".query.json", ".answer.json"),
                               result)
            path.unlink(missing_ok=True)
            self.answered += 1

    def answer(self, q: dict[str, Any]) -> dict[str, Any]:
        items, keys = query_keys(q)
        order = np.argsort(keys, kind="stable")
        uniq, inverse = np.unique(keys[order], return_inverse=True)
        est_sorted = self.kv.wait(self.kv.pull(uniq))[:, 0] if uniq.size else \
            np.empty(0, np.int64)
        est = np.empty(keys.size, np.int64)
        est[order] = est_sorted[inverse]
        k = int(q.get("top", 0))
        self.replies = []
        servers = self.po.layout.servers
        for rank in servers:
            self.po.send(rank, Message(op=Op.APP, aux=APP_TOP, aux2=k))
        self.po.wait_until(lambda: len(self.replies) == len(servers),
                           lambda: "heavy-hitter replies from the servers")
        tk, te = merge_top([m.keys for m in self.replies],
                           [np.zeros(0, np.int64) if m.vals is None else m.vals.reshape(-1)
                            for m in self.replies], k)
        total = sum(m.aux2 for m in self.replies)
        return make_answer(q, items, keys, est, tk, te, total, self.epsilon, "live")


# ---- the app -----------------------------------------------------------------------------
class SketchApp(App):
    name = "sketch"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.sc = cfg.sketch
        self.params = sketch_params(cfg)
        if self.sc.source in ("file", "dir", "news20", "hdf5") and not self.sc.path:
            raise ConfigError(f"{cfg.source}: [sketch] source = {self.sc.source!r} needs "
                             "[sketch] path")
        self.out = Path(cfg.job.output)
        self._last: tuple[float, dict[str, float]] | None = None

    def tables(self) -> list[Table]:
        params = self.params
        return [Table("cms", vdim=1, dtype="int64", handle=Add(),
                      store=lambda table: CountMinStore(params))]

    def work_queue(self):
        if self.sc.source != "hdf5":
            return None
        from ..data import PartitionQueue, load_manifest
        return PartitionQueue(load_manifest(self.sc.path).paths, epochs=self.sc.repeat)

    # ---- worker ----
    def _source(self, po: Postoffice):
        sc, w, nw = self.sc, po.worker_index(), po.num_workers
        if sc.source == "zipf":
            spec = ZipfSpec(sc.zipf_items, sc.zipf_s, sc.zipf_universe, sc.zipf_pool,
                            sc.burst_period, sc.burst_length, sc.burst_share, self.cfg.job.seed)
            return _Prefetched(zipf_stream(spec, w, sc.batch))
        if sc.source == "news20":
            return news20_stream(sc.path, w, nw, sc.batch, sc.repeat)
        if sc.source == "dir":
            return dir_stream(sc.path, w, nw, sc.item_type, sc.text_counts,
                              sc.idle_timeout or float("inf"))
        if sc.source == "hdf5":
            return self._hdf5(po)
        if w != 0:
            return iter(())  # one reader: stdin and a FIFO reach one process
        if sc.source == "stdin":
            check_stdin(po.rank)
            return _idle_limited(text_stream(0, sc.item_type, sc.text_counts, "stdin"),
                                 sc.idle_timeout)
        try:
            fd = os.open(sc.path, os.O_RDONLY)  # a FIFO: waits for the writer
        except OSError as e:
            raise ValueError(f"[sketch] path = {sc.path!r}: {e}") from None
        return _idle_limited(text_stream(fd, sc.item_type, sc.text_counts, sc.path),
                             sc.idle_timeout)

    def _hdf5(self, po: Postoffice):
        task = po.next_task()
        while task is not None:
            yield from hdf5_batches([task["path"]], max(1, self.sc.batch // 64))
            task = po.next_task(done=task)

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        sc = self.sc
        kv = KVWorker(po, "cms")
        live = None
        if po.worker_index() == 0:
            (self.out / "queries").mkdir(parents=True, exist_ok=True)
            # A finished run's index would answer queries meant for this one.
            (self.out / "sketch" / INDEX_NAME).unlink(missing_ok=True)
            live = _LiveQueries(po, kv, self.out / "queries", sc.query_poll, sc.epsilon)
        source = self._source(po)
        if isinstance(source, _Prefetched):
            source.prime()
        po.barrier(WORKERS)  # a common start for the throughput clock
        c = {"records": 0, "count": 0, "unique": 0, "pushes": 0}
        t = {"t_read": 0.0, "t_aggregate": 0.0, "t_push": 0.0, "t_wait": 0.0}
        t0 = time.perf_counter()
        last_report = time.monotonic()
        pending: list[int] = []
        it = iter(source)
        while True:
            a = time.perf_counter()
            batch: Batch | None = next(it, _END)
            b = time.perf_counter()
            t["t_read"] += b - a
            if batch is _END:
                break
            if batch is not None and batch.keys.size:
                keys, counts = aggregate(batch.keys, batch.counts)
                c_ = time.perf_counter()
                t["t_aggregate"] += c_ - b
                pending.append(kv.push(keys, counts.reshape(-1, 1)))
                d = time.perf_counter()
                t["t_push"] += d - c_
                while len(pending) >= sc.max_inflight:
                    kv.wait(pending.pop(0))
                t["t_wait"] += time.perf_counter() - d
                c["records"] += batch.records
                c["count"] += int(counts.sum())
                c["unique"] += keys.size
                c["pushes"] += 1
            if live is not None:
                live.poll()
            if time.monotonic() - last_report >= sc.report_interval:
                po.report(c)
                last_report = time.monotonic()
        d = time.perf_counter()
        for ts in pending:
            kv.wait(ts)
        t["t_wait"] += time.perf_counter() - d
        t["seconds"] = time.perf_counter() - t0
        if live is not None:
            live.poll(force=True)
        return {"counters": c, "times": t}

    # ---- server ----
    @staticmethod
    def _ranges(server) -> list[tuple[int, CountMinStore]]:
        """(range, store) of the ranges this server owns now (after failovers too)."""
        return server.ranges("cms")

    def on_server_start(self, po, server) -> None:
        def on_app(msg: Message) -> None:
            if msg.aux != APP_TOP:
                raise RuntimeError(f"unexpected app message {msg.aux} from rank {msg.sender}")
            parts = [store for _, store in self._ranges(server)]
            tops = [s.top(msg.aux2) for s in parts]
            keys, est = merge_top([t[0] for t in tops], [t[1] for t in tops], msg.aux2)
            po.send(msg.sender, Message(op=Op.APP, aux=APP_TOP_REPLY,
                                        aux2=sum(s.total for s in parts),
                                        keys=keys, vals=est.reshape(-1, 1), vdim=1))

        po.on(Op.APP, on_app)

    def on_server_stop(self, po, server) -> dict[str, Any]:
        files, total, updates, seconds = {}, 0, 0, 0.0
        for r, store in self._ranges(server):
            name = f"range-{r}.h5"
            store.save(self.out / "sketch" / name, r, {"rank": po.rank})
            files[r] = name
            total += store.total
            updates += store.updates
            seconds += store.seconds
        return {"files": files, "total": total, "updates": updates, "t_update": seconds,
                "server": po.layout.servers.index(po.rank)}

    # ---- scheduler ----
    def progress_line(self, totals: dict[str, float], elapsed: float) -> str:
        prev_t, prev = self._last or (0.0, {})
        self._last = (elapsed, dict(totals))
        dt = max(elapsed - prev_t, 1e-9)
        drec = totals.get("records", 0) - prev.get("records", 0)
        return (f"inserts {totals.get('records', 0):.4g} ({drec / dt:.3g}/s) "
                f"count {totals.get('count', 0):.4g} unique/request "
                f"{totals.get('unique', 0) / max(1, totals.get('pushes', 0)):.3g}")

    def finish(self, po, workers, servers, elapsed) -> None:
        sc, p = self.sc, self.params
        servers = sorted(servers, key=lambda s: s["server"])
        files = {int(r): name for s in servers for r, name in s["files"].items()}
        if sorted(files) != list(range(po.ring.num_ranges)):
            raise RuntimeError(f"saved ranges {sorted(files)} do not cover the ring's "
                               f"{po.ring.num_ranges} ranges")
        index = {"format": "mpips-countmin-index", "servers": po.ring.servers,
                 "virtual_servers": po.ring.virtual_servers,
                 "files": [files[r] for r in range(po.ring.num_ranges)],
                 "epsilon": sc.epsilon,
                 "delta": sc.delta, "depth": p.depth, "width": p.width,
                 "conservative": sc.conservative, "item_type": sc.item_type,
                 "total": sum(s["total"] for s in servers)}
        _write_json_atomic(self.out / "sketch" / INDEX_NAME, index)
        records = sum(w["counters"]["records"] for w in workers)
        count = sum(w["counters"]["count"] for w in workers)
        unique = sum(w["counters"]["unique"] for w in workers)
        seconds = max((w["times"]["seconds"] for w in workers), default=0.0)
        stages = {k: round(sum(w["times"][k] for w in workers), 3)
                  for k in ("t_read", "t_aggregate", "t_push", "t_wait")}
        t_update = round(sum(s["t_update"] for s in servers), 3)
        rate = records / seconds if seconds > 0 else 0.0
        metrics = {"time": round(elapsed, 3), "workers": len(workers),
                   "servers": len(servers), "inserts": records, "count": count,
                   "pushed_keys": unique, "stream_seconds": round(seconds, 4),
                   "inserts_per_s": rate, "server_update_seconds": t_update, **stages,
                   "depth": p.depth, "width": p.width, "source": sc.source}
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        print(f"sketch: {records} inserts (total count {count}) by {len(workers)} worker(s) "
              f"into {len(servers)} server(s) in {seconds:.3f} s: {rate:.4g} inserts/s; "
              f"{unique} keys pushed after aggregation ({unique / max(1, records):.3f} per "
              f"insert); sketch {p.depth} x {p.width} per server", flush=True)
        print("sketch: worker seconds (summed over workers) "
              + " ".join(f"{k[2:]} {v}" for k, v in stages.items())
              + f"; server update seconds {t_update}", flush=True)
        if sc.top:
            saved = SavedSketch(self.out / "sketch")
            tk, te = saved.top(sc.top)
            ids = unmix64(tk) if sc.item_type == "int" else tk
            shown = ", ".join(f"{i}:{e}" for i, e in zip(ids.tolist(), te.tolist(),
                                                         strict=True))
            print(f"sketch: top {tk.size} (id:estimate) {shown}", flush=True)
        print(f"sketch: saved to {self.out / 'sketch'}; ask it with `python -m mpips query "
              f"--job-output {self.out} --top 10`", flush=True)


_END = Batch(np.empty(0, np.uint64), None, 0)


class _Prefetched:
    """A generator whose set-up (the Zipf pool) runs before the clock starts."""

    def __init__(self, gen):
        self.gen = gen
        self.first: Batch | None | object = _END
        self.primed = False

    def prime(self) -> None:
        self.first = next(self.gen, _END)
        self.primed = True

    def __iter__(self):
        if self.primed:
            if self.first is not _END:
                yield self.first
        yield from self.gen


def _idle_limited(gen, idle_timeout: float):
    """End a text stream after ``idle_timeout`` s of None (0: never)."""
    quiet_since = None
    for batch in gen:
        if batch is None:
            quiet_since = quiet_since or time.monotonic()
            if idle_timeout and time.monotonic() - quiet_since > idle_timeout:
                return
        else:
            quiet_since = None
        yield batch
