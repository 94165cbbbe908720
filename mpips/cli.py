"""``python -m mpips``: the command line.

Every rank of an ``mpiexec`` job runs the same command. Config errors are
found before MPI starts: rank 0 prints them, every rank exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__, checkpoint, config  # noqa: F401 - checkpoint declares its section

APPS = {"linear": "mpips.apps.linear:LinearApp",
        "sketch": "mpips.apps.sketch:SketchApp"}


def launch_rank() -> int:
    """This process's rank as the launcher tells it, before MPI starts (0 alone)."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _fail(text: str, code: int = 2) -> int:
    if launch_rank() == 0:
        print(f"mpips: {text}", file=sys.stderr, flush=True)
    return code


def _load_app(name: str, source: str):
    if name not in APPS:
        raise config.ConfigError(f"{source}: [job] app = {name!r} is not one of "
                                 + ", ".join(sorted(APPS)))
    module, cls = APPS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a job file value (repeatable)")
    p.add_argument("--servers", type=int, help="number of server ranks (layout.servers)")


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if args.servers is not None:
        extra.append(f"layout.servers={args.servers}")
    if getattr(args, "resume", False):
        extra.append("checkpoint.resume=true")
    return extra


def cmd_train(args: argparse.Namespace) -> int:
    # Import the app first: it declares its job file sections.
    try:
        app_name = config.peek(args.job, _overrides(args), "job", "app")
        app_cls = _load_app(app_name, args.job)
        cfg = config.load(args.job, _overrides(args))
    except config.ConfigError as e:
        return _fail(str(e))
    from .runtime import run
    run(cfg, app_cls(cfg))
    return 0


def cmd_bench_kv(args: argparse.Namespace) -> int:
    from .bench.kv import KVBench
    extra = _overrides(args)
    for key in ("keys", "min_keys", "vdim", "repeat", "json"):
        value = getattr(args, key)
        if value is not None:
            extra.append(f"bench.{key}={value!r}" if key == "json" else f"bench.{key}={value}")
    try:
        cfg = config.load(args.job, extra)
    except config.ConfigError as e:
        return _fail(str(e))
    from .runtime import run
    run(cfg, KVBench(cfg))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from .apps.sketch_query import cli_query
    return cli_query(args)


def cmd_config(args: argparse.Namespace) -> int:
    print(config.describe())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mpips",
        description="mpips: a parameter server on MPI. Run under "
                    "`mpiexec -n N python -m mpips ...` with N >= 3 "
                    "(1 scheduler, servers, workers).")
    p.add_argument("--version", action="version", version=f"mpips {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a job file",
                       description="Train the job file's [job] app. Example: mpiexec -n 4 "
                                   "python -m mpips train jobs/demo.toml -o job.output=runs/d")
    t.add_argument("job", help="job file (TOML)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint ([checkpoint] dir)")
    _common(t)
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="benchmarks (kv)",
                       description="Benchmarks that print what they measured.")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    kv = bsub.add_parser("kv", help="push/pull/pushpull throughput next to raw MPI",
                         description="Example: mpiexec -n 3 python -m mpips bench kv "
                                     "--keys 1000000")
    kv.add_argument("job", nargs="?", help="optional job file ([bench], [layout], ...)")
    kv.add_argument("--keys", type=int, help="largest request size (default 1e6)")
    kv.add_argument("--min-keys", dest="min_keys", type=int, help="smallest request size")
    kv.add_argument("--vdim", type=int, help="values per key (default 1)")
    kv.add_argument("--repeat", type=int, help="requests timed per op and size")
    kv.add_argument("--json", help="append JSON lines of the results to this file")
    _common(kv)
    kv.set_defaults(func=cmd_bench_kv)

    q = sub.add_parser("query", help="ask a running or finished sketch job",
                       description="Point estimates and heavy hitters of a count-min "
                                   "sketch job (app 'sketch'), running or finished. Example: "
                                   "python -m mpips query --job-output runs/sketch --ids 1 2 "
                                   "--top 10")
    from .apps.sketch_query import add_query_arguments
    add_query_arguments(q)
    q.set_defaults(func=cmd_query)

    c = sub.add_parser("config", help="list every job file section and key with defaults")
    c.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)
