"""``python -m mpips bench filters``: the same logistic-regression job with no
filters, each filter alone, and the whole chain, side by side in one run.

For each data set (news20 binary, synthetic CTR) and filter setting it starts
``mpiexec -n NP python -m mpips.bench.filters run JOB -o ...`` (1 scheduler,
1 server, 2 workers by default; each run has a timeout), which trains the
linear app and writes the filter statistics of every rank to
``OUTPUT/filters.json``. The table gives, for the weight table ``w``: bytes
worker -> server (pull and push requests, as sent on the wire: header and
8-byte aligned sections) and server -> worker (pull replies), their ratio to
no filters, keys/s of training, and the final test AUC. Evaluation tables
(``eval``, ``eval_rows``) are left unfiltered and not counted: they are the
same in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..apps.linear import LinearApp
from . import append_jsonl

ROOT = Path(__file__).resolve().parents[2]

CHAIN_PUSH = ["kkt", "significant", "key_cache", "key_varint", "fixed_point", "zlib"]
CHAIN_PULL = ["key_cache", "key_varint", "fixed_point", "zlib"]
SETTINGS: dict[str, tuple[list[str], list[str]]] = {
    "none": ([], []),
    "key_cache": (["key_cache"], ["key_cache"]),
    "key_varint": (["key_varint"], ["key_varint"]),
    "zlib": (["zlib"], ["zlib"]),
    "zstd": (["zstd"], ["zstd"]),
    "fixed_point": (["fixed_point"], ["fixed_point"]),
    "significant": (["significant"], []),
    "kkt": (["kkt"], []),
    "all": (CHAIN_PUSH, CHAIN_PULL),
}

# The jobs: L1-regularised logistic regression (the KKT filter needs an L1
# penalty; kkt_l1 is the same penalty in pushed-gradient units).
DATASETS: dict[str, dict[str, Any]] = {
    "news20": {"job": "jobs/news20.toml", "train": "data/news20", "test": "data/news20-test",
               "overrides": ["linear.l1=1e-4", "filters.kkt_l1=1e-4", "filters.pull_bits=8",
                             "filters.significant_threshold=1e-4"]},
    "ctr": {"job": "jobs/ctr.toml", "train": "data/ctr-bench", "test": "data/ctr-bench-test",
            "overrides": ["data.epochs=5", "filters.kkt_l1=1.0", "filters.kkt_accumulate=true",
                          "filters.pull_bits=8",
                          "filters.significant_threshold=1e-2"]},
}


class FilterBenchApp(LinearApp):
    """The linear app, plus every rank's filter statistics at the end."""

    def run_worker(self, po):
        out = super().run_worker(po)
        out["filter_stats"] = po.stats()
        return out

    def on_server_stop(self, po, server):
        out = super().on_server_stop(po, server)
        out["filter_stats"] = po.stats()
        return out

    def finish(self, po, workers, servers, elapsed):
        super().finish(po, workers, servers, elapsed)
        evals = next((w["evals"] for w in workers if w.get("evals")), [])
        final = evals[-1] if evals else {}
        w2s = s2w = 0
        per_filter: dict[str, dict[str, int]] = {}
        for w in workers:
            table = w.get("filter_stats", {}).get("worker", {}).get("w", {})
            for direction in ("push", "pull"):
                for name, st in table.get(direction, {}).items():
                    if name == "wire":
                        w2s += st.get("bytes_after", 0)
                        continue
                    acc = per_filter.setdefault(f"{direction}:{name}", {})
                    for k, v in st.items():
                        acc[k] = acc.get(k, 0) + v
        for s in servers:
            s2w += s.get("filter_stats", {}).get("server", {}).get("replies", {}) \
                .get("w", {}).get("bytes_after", 0)
        result = {"w2s_bytes": w2s, "s2w_bytes": s2w, "auc": final.get("auc"),
                  "accuracy": final.get("accuracy"),
                  "keys_per_s": final.get("keys_per_s"), "seconds": elapsed,
                  "filters": per_filter}
        path = Path(self.cfg.job.output) / "filters.json"
        path.write_text(json.dumps(result, indent=1))


def run_rank(argv: list[str]) -> None:
    """Under mpiexec: ``run JOB [-o k=v ...]``."""
    from .. import config
    from ..runtime import run
    p = argparse.ArgumentParser(prog="python -m mpips.bench.filters run")
    p.add_argument("job")
    p.add_argument("-o", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    cfg = config.load(args.job, args.overrides)
    run(cfg, FilterBenchApp(cfg))


def _prepare(name: str, log) -> None:
    """Convert or make the data a benchmark needs, if missing."""
    ds = DATASETS[name]
    if (ROOT / ds["train"] / "manifest.json").exists() and \
            (ROOT / ds["test"] / "manifest.json").exists():
        return
    py = [sys.executable, "-m"]
    if name == "news20":
        shared = Path(os.environ.get("MPIPS_SHARED_DATA", ROOT.parent / "shared" / "data"))
        for src, dst in (("news20.binary.train", ds["train"]), ("news20.binary.test",
                                                                 ds["test"])):
            subprocess.run(py + ["data_tools", "convert", str(shared / f"{src}.libsvm.gz"),
                                 "-o", str(ROOT / dst), "--rows-per-partition", "1500",
                                 "--overwrite"], check=True, cwd=ROOT, timeout=600)
    else:
        tmp = ROOT / "data" / "ctr-bench-all"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(py + ["data_tools", "synth", "ctr", "--rows", "200000", "--fields",
                             "20", "--vocab", "100000", "--seed", "7", "--rows-per-partition",
                             "25000", "-o", str(tmp)], check=True, cwd=ROOT, timeout=600)
        subprocess.run(py + ["mpips.apps.linear.tools", "split", str(tmp),
                             str(ROOT / ds["train"]), str(ROOT / ds["test"]),
                             "--test-partitions", "2"], check=True, cwd=ROOT, timeout=600)
    log(f"prepared {name} data")


def _run_one(name: str, setting: str, np_: int, out: Path, timeout: float,
             extra: list[str]) -> dict[str, Any]:
    ds = DATASETS[name]
    push, pull = SETTINGS[setting]
    run_dir = out / f"{name}-{setting}"
    overrides = [f"job.output={run_dir}", f"data.train={ds['train']}",
                 f"data.test={ds['test']}", "filters.tables=[\"w\"]",
                 f"filters.push={json.dumps(push)}", f"filters.pull={json.dumps(pull)}",
                 "linear.save_model=false", *ds["overrides"], *extra]
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = ["mpiexec", "-n", str(np_), "--oversubscribe", sys.executable, "-m",
           "mpips.bench.filters", "run", ds["job"]]
    for o in overrides:
        cmd += ["-o", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}/{setting} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((run_dir / "filters.json").read_text())


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = args.settings.split(",")
    for s in settings:
        if s not in SETTINGS:
            print(f"mpips: unknown filter setting {s!r} ({', '.join(SETTINGS)})",
                  file=sys.stderr)
            return 2
    results: list[dict[str, Any]] = []
    for name in args.data.split(","):
        if name not in DATASETS:
            print(f"mpips: unknown data set {name!r} ({', '.join(DATASETS)})",
                  file=sys.stderr)
            return 2
        _prepare(name, print)
        print(f"\n{name}: {DATASETS[name]['job']} ({args.np} ranks: 1 scheduler, 1 server, "
              f"{args.np - 2} workers), bytes of table w as sent; best of {args.repeat} "
              "by time")
        print(f"{'filters':<12} {'w->s bytes':>12} {'ratio':>7} {'s->w bytes':>12} "
              f"{'ratio':>7} {'total':>7} {'keys/s':>10} {'AUC':>7} {'dAUC':>8}")
        base = None
        for setting in settings:
            runs = [_run_one(name, setting, args.np, out, args.timeout, args.set)
                    for _ in range(args.repeat)]
            r = min(runs, key=lambda x: x["seconds"])
            r.update(data=name, setting=setting,
                     keys_per_s=max(x["keys_per_s"] or 0 for x in runs))
            results.append(r)
            if base is None:
                base = r
            w, s = r["w2s_bytes"], r["s2w_bytes"]
            bw, bs = base["w2s_bytes"], base["s2w_bytes"]
            print(f"{setting:<12} {w:>12,} {bw / max(w, 1):>6.2f}x {s:>12,} "
                  f"{bs / max(s, 1):>6.2f}x {(bw + bs) / max(w + s, 1):>6.2f}x "
                  f"{r['keys_per_s']:>10.3g} {r['auc']:>7.4f} {r['auc'] - base['auc']:>+8.4f}",
                  flush=True)
    if args.json:
        append_jsonl(args.json, (dict(r, time=time.time()) for r in results))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="news20,ctr", help="data sets: news20, ctr")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="filter settings, the first is the baseline: " + ", ".join(SETTINGS))
    p.add_argument("--np", type=int, default=4, help="ranks per run (default 4)")
    p.add_argument("--repeat", type=int, default=1, help="runs per setting (best time)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    p.add_argument("--out", default="runs/bench_filters", help="folder of the runs")
    p.add_argument("--json", help="append one JSON line per run to this file")
    p.add_argument("-o", "--set", action="append", default=[],
                   help="extra override for every run (section.key=value)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        run_rank(sys.argv[2:])
    else:
        ap = argparse.ArgumentParser(prog="python -m mpips.bench.filters")
        add_arguments(ap)
        sys.exit(run(ap.parse_args()))
