"""``python -m mpips``: the command line.

Every rank of an ``mpiexec`` job runs the same command. Config errors are
found before MPI starts: rank 0 prints them, every rank exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__, config, consistency, startup
from .kv.store import huge_pages_off
from .transport import MPIUnavailable

APPS = {"linear": "mpips.apps.linear:LinearApp",
        "sketch": "mpips.apps.sketch:SketchApp",
        "lda": "mpips.apps.lda:LdaApp",
        "bpg": "mpips.apps.bpg:BpgApp"}


def launch_rank() -> int:
    """This process's rank as the launcher tells it, before MPI starts (0 alone)."""
    from .layout import launcher_rank
    told = launcher_rank(os.environ)
    return 0 if told is None else told[0]


def _fail(text: str, code: int = 2) -> int:
    if launch_rank() == 0:
        print(f"mpips: {text}", file=sys.stderr, flush=True)
    else:
        # Every rank fails alike; the launcher kills the job at the first exit,
        # so the others leave last, once rank 0 has said why.
        time.sleep(1.0)
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
    if getattr(args, "init_model", None):
        extra.append(f"linear.init_model={args.init_model}")
    if getattr(args, "log_format", None):
        extra.append(f"job.log_format={args.log_format}")
    return extra


def _job(args: argparse.Namespace):
    """(config, app) of a job file and its overrides; ConfigError names the key."""
    app_name = config.peek(args.job, _overrides(args), "job", "app")
    app_cls = _load_app(app_name, args.job)
    cfg = config.load(args.job, _overrides(args))
    consistency.policy_of(cfg)  # a contradictory [consistency] fails here, on every rank
    return cfg, app_cls(cfg)  # an app checks its data paths here: errors name key and file


def cmd_train(args: argparse.Namespace) -> int:
    try:
        cfg, app = _job(args)
    except config.ConfigError as e:
        return _fail(str(e))
    startup.mark("job loaded")
    from .runtime import run
    run(cfg, app)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a job without starting ranks: every section and key, the
    consistency policy, the app's data paths, and the layout for --np ranks."""
    from .layout import LayoutError, make_layout
    try:
        cfg, app = _job(args)
    except (config.ConfigError, ValueError) as e:
        print(f"mpips: {e}", file=sys.stderr)
        return 2
    print(f"{args.job}: valid; app {cfg.job.app!r}, output {cfg.job.output!r}")
    queue = app.work_queue()
    from .data.queue import PartitionQueue, partition_warning
    if isinstance(queue, PartitionQueue):
        print(f"  work queue: {len(queue.partitions)} partition(s) x {queue.epochs} epoch(s)")
    if args.np is not None:
        try:
            layout = make_layout(args.np, cfg.layout.servers, None, cfg.layout.spread_hosts)
        except LayoutError as e:
            print(f"mpips: {args.job}: with {args.np} ranks: {e}", file=sys.stderr)
            return 2
        workers = len(layout.workers)
        print(f"  with {args.np} ranks: 1 scheduler, {len(layout.servers)} server(s), "
              f"{workers} worker(s)")
        warning = partition_warning(queue, workers)
        if warning:
            print(f"  warning: {warning}")
    return 0


DEMO_JOB = Path(__file__).resolve().parent / "jobs" / "demo.toml"


def cmd_demo(args: argparse.Namespace) -> int:
    """``mpips demo``: ``mpips run`` of the packaged demo job."""
    from . import launch
    program = ["train", str(DEMO_JOB), "-o", f"job.output={args.output}"]
    program += [a for o in _overrides(args) for a in ("-o", o)]
    run = argparse.Namespace(ranks=args.ranks, launcher="auto", no_ft=False, mpi_arg=[],
                             dry_run=False, program=program, end_grace=launch.END_GRACE)
    return launch.cmd_run(run, _check_program)


def _check_program(program: list[str], ranks: int) -> tuple[int, str | None]:
    """For ``mpips run``: parse the ranks' command line here and validate a
    training job for ``ranks`` ranks, before any rank starts. (0 if it can,
    the training job's output folder, where its status.json will be)."""
    try:
        if program[0] == "convert":
            return 0, None  # data_tools checks its own options on every rank
        args = parser(program).parse_args(program)
    except SystemExit as e:  # argparse said why
        return int(e.code or 2), None
    if program[0] != "train":
        return 0, None
    args.np = ranks
    code = cmd_validate(args)
    if code:
        return code, None
    return 0, config.load(args.job, _overrides(args)).job.output


def cmd_bench_kv(args: argparse.Namespace) -> int:
    from .bench.kv import KVBench
    extra = _overrides(args)
    for key in ("keys", "min_keys", "vdim", "repeat", "json", "window", "keys_kind"):
        value = getattr(args, key)
        if value is not None:
            extra.append(f"bench.{key}={value!r}" if isinstance(value, str)
                         else f"bench.{key}={value}")
    for key in ("chunk_keys", "coalesce_bytes"):
        if getattr(args, key) is not None:
            extra.append(f"kv.{key}={getattr(args, key)}")
    try:
        cfg = config.load(args.job, extra)
    except config.ConfigError as e:
        return _fail(str(e))
    from .runtime import run
    run(cfg, KVBench(cfg))
    return 0


def _bench_app(module: str, cls: str):
    def command(args: argparse.Namespace) -> int:
        app_cls = getattr(importlib.import_module(module), cls)
        try:
            cfg = config.load(args.job, _overrides(args))
        except config.ConfigError as e:
            return _fail(str(e))
        from .runtime import run
        run(cfg, app_cls(cfg))
        return 0
    return command


def cmd_query(args: argparse.Namespace) -> int:
    from .apps.sketch.cli import cli_query
    return cli_query(args)


# The sections of every job; an app adds its own (named like the app).
COMMON_SECTIONS = ("job", "layout", "kv", "transport", "data", "checkpoint", "consistency",
                   "filters")


def cmd_config(args: argparse.Namespace) -> int:
    if args.app is None:
        print(config.describe())
        return 0
    if args.app not in APPS:
        return _fail(f"--app {args.app!r} is not one of {', '.join(sorted(APPS))}")
    print(config.describe([*COMMON_SECTIONS, args.app]))
    return 0


# Benchmarks whose options live in their own (heavy) modules: name, module, help.
# Each module has add_arguments(parser) and run(args); its docstring is the
# subcommand's description.
LAZY_BENCHES = (
    ("filters", "mpips.bench.filters", "bytes, keys/s and AUC of LR jobs with each filter and "
     "the whole chain (runs its own mpiexec)"),
    ("path", "mpips.bench.path", "where the time of one request goes, stage by stage (no MPI)"),
    ("peers", "mpips.bench.peers", "mpips, Vowpal Wabbit and scikit-learn on the same data, "
     "interleaved: time to a test AUC (runs its own mpiexec)"),
    ("scheduler", "mpips.bench.scheduler", "the scheduler's barriers, tasks, heartbeats and "
     "ring changes at 100-10000 simulated ranks (no MPI)"),
    ("store", "mpips.bench.store", "one server's storage alone: inserts, lookups, bytes per "
     "parameter (no MPI)"),
)


def _fill_bench(p: argparse.ArgumentParser, module_name: str) -> None:
    module = importlib.import_module(module_name)
    p.description = module.__doc__
    module.add_arguments(p)
    p.set_defaults(func=module.run)


def parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line. The options of ``run``, ``query`` and each
    benchmark come from modules that import much (the apps, scipy, the
    launcher); they are read only when ``argv`` names that command, so a rank
    of ``mpips train`` and ``mpips --help`` load none of them. (Help lists
    every command either way; ``mpips bench peers --help`` names peers.)"""
    command = argv[0] if argv else None
    bench = argv[1] if command == "bench" and len(argv) > 1 else None
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
    t.add_argument("--init-model", metavar="MODEL_H5",
                   help="linear jobs: start from this model ([linear] init_model; warm start)")
    t.add_argument("--log-format", choices=("text", "json"),
                   help="progress lines as text or one JSON object each ([job] log_format)")
    _common(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="start a job on N ranks with the flags this MPI needs",
                       description="Checks the job first, then starts mpiexec (or srun) with "
                                   "the flags the installed MPI needs. Examples: python -m "
                                   "mpips run -n 4 jobs/news20.toml -o data.epochs=3; "
                                   "python -m mpips run -n 3 bench kv --keys 1000000. Ctrl-C: "
                                   "checkpoint and stop (again: end at once).")
    if command == "run":
        from . import launch
        launch.add_arguments(r)
        r.set_defaults(func=lambda args: launch.cmd_run(args, _check_program))

    sub.add_parser("convert", help="convert Hadoop/Spark exports to HDF5 partitions "
                   "(python -m data_tools convert: mpips convert --help)", add_help=False)
    d = sub.add_parser("demo", help="train the demo job (built-in synthetic data) on N ranks",
                       description="The demo job that ships with mpips (sparse logistic "
                                   "regression on synthetic data), run from any folder with "
                                   "mpips run; its output goes to ./runs/demo.")
    d.add_argument("-n", "--np", dest="ranks", type=int, help="ranks (default as mpips run)")
    d.add_argument("--output", default="runs/demo", help="output folder (default runs/demo)")
    _common(d)
    d.set_defaults(func=cmd_demo)

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
    kv.add_argument("--window", type=int, help="requests in flight per worker (default 1)")
    kv.add_argument("--keys-kind", dest="keys_kind", choices=("random", "dense"),
                    help="random hashed keys (default) or dense consecutive ones")
    kv.add_argument("--chunk-keys", dest="chunk_keys", type=int,
                    help="kv.chunk_keys: keys per message of a large request (0: no cut)")
    kv.add_argument("--coalesce-bytes", dest="coalesce_bytes", type=int,
                    help="kv.coalesce_bytes: batch request messages below this size (0: off)")
    _common(kv)
    kv.set_defaults(func=cmd_bench_kv)
    for name, module, text in LAZY_BENCHES:
        one = bsub.add_parser(name, help=text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == bench:  # only the one named: every rank skips the others' imports
            _fill_bench(one, module)
    fo = bsub.add_parser("failover", help="kill a server mid-run, time detection, failover "
                         "and repair",
                         description="Example: mpiexec --with-ft ulfm -n 6 python -m mpips "
                                     "bench failover --servers 3 -o layout.replication=1 "
                                     "(options: [failover] in python -m mpips config)")
    fo.add_argument("job", nargs="?", help="optional job file")
    _common(fo)
    fo.set_defaults(func=_bench_app("mpips.bench.failover", "FailoverBench"))
    sc = bsub.add_parser("scale", help="fill the servers with [scale] params parameters, "
                         "then sweep them",
                         description="Example: mpiexec -n 4 python -m mpips bench scale "
                                     "--servers 2 -o scale.params=5e8")
    sc.add_argument("job", nargs="?", help="optional job file")
    _common(sc)
    sc.set_defaults(func=_bench_app("mpips.bench.scale", "ScaleBench"))

    q = sub.add_parser("query", help="ask a running or finished sketch job",
                       description="Point estimates and heavy hitters of a count-min "
                                   "sketch job (app 'sketch'), running or finished. Example: "
                                   "python -m mpips query --job-output runs/sketch --ids 1 2 "
                                   "--top 10")
    if command == "query":
        from .apps.sketch.cli import add_query_arguments
        add_query_arguments(q)
        q.set_defaults(func=cmd_query)

    v = sub.add_parser("validate", help="check a job file without starting ranks",
                       description="Checks every section and key (with 'did you mean' for "
                                   "unknown ones), the consistency policy and the app's data "
                                   "paths; with --np N also the layout. Exit 0 if the job "
                                   "can start, 2 if not.")
    v.add_argument("job", help="job file (TOML)")
    v.add_argument("--np", type=int, help="ranks the job will run on (checks the layout)")
    _common(v)
    v.set_defaults(func=cmd_validate)
    c = sub.add_parser("config", help="print every job file section and key at its default, "
                       "as TOML with the help as comments (a job file to start from)")
    c.add_argument("--app", choices=sorted(APPS), help="only the sections a job of this app "
                   "reads")
    c.set_defaults(func=cmd_config)
    _linear_commands(sub)
    return p


def _linear_commands(sub) -> None:
    """predict / inspect / plot for linear models (mpips/apps/linear/tools.py)."""
    def run(name):
        def call(args):
            from .apps.linear import tools
            return getattr(tools, name)(args)
        return call

    pr = sub.add_parser("predict", help="score a converted data set with a linear model",
                        description="Write label, score (probability for the logistic loss, "
                                    "else the margin) and margin per row, and print exact "
                                    "test metrics. Alone or under mpiexec (ranks share the "
                                    "rows). Example: python -m mpips predict --model "
                                    "runs/news20/model.h5 --data data/news20-test --out p.tsv")
    pr.add_argument("--model", required=True, help="model.h5 written by a linear job")
    pr.add_argument("--data", required=True, help="converted data folder (manifest.json)")
    pr.add_argument("--out", required=True, help="output TSV: label, score, margin")
    pr.add_argument("--metrics", help="also write the metrics as JSON here")
    pr.add_argument("--chunk-rows", type=int, default=65536, help="rows read at a time")
    pr.set_defaults(func=run("cmd_predict"))
    ins = sub.add_parser("inspect", help="summarise a linear model file",
                         description="Keys, nonzero weights, norms, bias and the top "
                                     "features of model.h5.")
    ins.add_argument("model")
    ins.add_argument("--top", type=int, default=10, help="features to list")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.add_argument("--data", help="the converted data set whose hashing names the features "
                     "(default: the one the model records, else its training set)")
    ins.add_argument("--export", metavar="TSV", help="write every weight with its feature "
                     "(original id, column or category) to this TSV file")
    ins.set_defaults(func=run("cmd_inspect"))
    pl = sub.add_parser("plot", help="loss and AUC curves from metrics.jsonl (matplotlib)",
                        description="Example: python -m mpips plot runs/news20/metrics.jsonl "
                                    "-o curves.png (several files: one curve each)")
    pl.add_argument("metrics", nargs="+", help="metrics.jsonl file(s)")
    pl.add_argument("-o", "--out", required=True, help="PNG to write")
    pl.set_defaults(func=run("cmd_plot"))


def cmd_convert(rest: list[str]) -> int:
    """``mpips convert ...`` becomes ``python -m data_tools convert ...`` (one
    front door; under ``mpips run`` its ranks share the input files). An
    exec, not an import: data_tools builds on mpips, never the reverse."""
    os.execv(sys.executable, [sys.executable, "-m", "data_tools", "convert", *rest])
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    startup.mark("imported")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["convert"]:  # its options are data_tools convert's own
        return cmd_convert(argv[1:])
    args = parser(argv).parse_args(argv)
    huge_pages_off()  # before any array of the job is made
    try:
        return args.func(args)
    except MPIUnavailable as e:  # one line, not a traceback from deep inside
        print(f"mpips: {e}", file=sys.stderr)
        return 2
