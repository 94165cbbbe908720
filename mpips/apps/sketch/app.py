"""Streaming count-min sketch: workers push (item key, count) increments,
servers hold count-min rows for the keys of their ring ranges.

Data path. A worker reads a stream (:mod:`mpips.apps.sketch.stream`: Zipf
generator, news20 words, stdin / file / FIFO, a folder of arriving part files,
or HDF5 partitions), hashes item ids with :func:`mpips.keys.hash_feature`
(strings: FNV-1a 64 first), aggregates duplicates of a batch worker-side (one
sort: sorted unique keys and summed counts), and pushes them to table
``cms`` (int64, vdim 1) with at most ``max_inflight`` pushes outstanding.
Each server's table is a :class:`~mpips.apps.sketch.store.CountMinStore`:
``depth x width`` int64 counters from ``epsilon``/``delta``, plain or
conservative update, and a vectorised heavy-hitter candidate set. Pulls return
estimates, so point queries are ordinary kv pulls.

Stdin. Under Open MPI 5, mpiexec forwards stdin to one rank (``--stdin R``)
but never delivers end of file (open-mpi/ompi#12777 and related), so a stream
on mpiexec's stdin cannot end. ``jobs/sketch_stdin.sh`` therefore copies its
own stdin into a FIFO that worker 0 reads (``source = "file"``): end of the
input ends the job cleanly. ``source = "stdin"`` reads fd 0 of worker 0 for an
MPI that forwards EOF, with ``idle_timeout`` as a way out.

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
from pathlib import Path
from typing import Any

import numpy as np

from ...app import App, Table
from ...config import ConfigError, Option, non_negative, positive, section
from ...handles import Add
from ...kv.worker import KVWorker
from ...postoffice import WORKERS, Postoffice
from ..progress import Deltas
from .queries import LiveQueries, serve_top, write_json_atomic
from .store import INDEX_NAME, CountMinStore, SavedSketch, SketchParams, unmix64
from .stream import (
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

def sketch_params(cfg) -> SketchParams:
    sc = cfg.sketch
    return SketchParams(sc.epsilon, sc.delta, cfg.job.seed, sc.conservative, sc.candidates)



# ---- the app -------------------------------------------------------------------------
class SketchApp(App):
    name = "sketch"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.sc = cfg.sketch
        self.params = sketch_params(cfg)
        self._parts: dict | None = None  # hdf5 source: path -> manifest entry
        if self.sc.source in ("file", "dir", "news20", "hdf5") and not self.sc.path:
            raise ConfigError(f"{cfg.source}: [sketch] source = {self.sc.source!r} needs "
                             "[sketch] path")
        self.out = Path(cfg.job.output)
        self._deltas = Deltas()

    def tables(self) -> list[Table]:
        params = self.params
        return [Table("cms", vdim=1, dtype="int64", handle=Add(),
                      store=lambda table: CountMinStore(params))]

    def work_queue(self):
        if self.sc.source != "hdf5":
            return None
        from ...data import PartitionQueue, load_manifest
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
            if self._parts is None:  # the manifest's entries: each file checked as it opens
                from ...data import load_manifest
                self._parts = {p.path: p for p in load_manifest(self.sc.path).partitions}
            yield from hdf5_batches([task["path"]], max(1, self.sc.batch // 64),
                                    [self._parts[task["path"]]])
            task = po.next_task(done=task)

    def run_worker(self, po: Postoffice) -> dict[str, Any]:
        sc = self.sc
        kv = KVWorker(po, "cms")
        live = None
        if po.worker_index() == 0:
            (self.out / "queries").mkdir(parents=True, exist_ok=True)
            # A finished run's index would answer queries meant for this one.
            (self.out / "sketch" / INDEX_NAME).unlink(missing_ok=True)
            live = LiveQueries(po, kv, self.out / "queries", sc.query_poll, sc.epsilon)
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
        serve_top(po, lambda: [store for _, store in self._ranges(server)])

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
    def progress_fields(self, totals: dict[str, float], elapsed: float) -> dict[str, Any]:
        change, dt = self._deltas.step(totals, elapsed)
        return {"inserts": int(totals.get("records", 0)),
                "inserts_per_s": change.get("records", 0) / dt,
                "count": int(totals.get("count", 0)),
                "unique_per_request": totals.get("unique", 0) / max(1, totals.get("pushes", 0))}

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
        write_json_atomic(self.out / "sketch" / INDEX_NAME, index)
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
