"""Run a job on this rank: build the postoffice, play the rank's role, and
end the whole job cleanly, or with one clear message when a rank fails."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from . import startup
from .app import App
from .config import Config
from .kv.server import KVServer
from .layout import likely_role
from .postoffice import ALL, JobPreempted, Postoffice, van_for
from .scheduler import Scheduler
from .status import write_status
from .transport import Message, Op


def run(cfg: Config, app: App) -> None:
    """Every rank calls this; it does not return (the process exits)."""
    try:
        app.before_mpi(likely_role(os.environ, cfg.layout.servers))
    except Exception:  # only a head start: the role's own imports report errors
        pass
    van = van_for(cfg)
    startup.mark("MPI ready")
    try:
        po = Postoffice(cfg, app.tables(), van)
    except Exception as e:
        # Every rank computes the same layout, so every rank fails alike:
        # rank 0 says why, the others leave quietly.
        if van.rank == 0:
            print(f"mpips: {type(e).__name__}: {e}", flush=True)
        else:
            time.sleep(1.0)  # leave after rank 0 has said why (as the CLI does)
        van.finalize_and_exit(1)
        return
    startup.mark("postoffice")
    _signals(po)
    profiler = _profiler()
    try:
        if po.is_scheduler:
            Scheduler(po, app).run()
        elif po.is_server:
            _serve(po, app)
        else:
            _work(po, app)
    except JobPreempted:
        _dump_profile(profiler, po)
        van.finalize_and_exit(0)
    except BaseException as e:  # noqa: BLE001 - any failure ends the job loudly
        po.fail(e)
    _dump_profile(profiler, po)
    van.finalize_and_exit(0)


# MPIPS_PROFILE=DIR: every rank runs its role under cProfile and writes
# DIR/rank<R>-<role>.prof (pstats) and .txt (the top functions by own time).
PROFILE_ENV = "MPIPS_PROFILE"


def _profiler():
    if not os.environ.get(PROFILE_ENV):
        return None
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _dump_profile(profiler, po: Postoffice) -> None:
    if profiler is None:
        return
    import io
    import pstats
    profiler.disable()
    out = Path(os.environ[PROFILE_ENV])
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"rank{po.rank}-{po.layout.describe(po.rank).split()[0]}"
    profiler.dump_stats(f"{stem}.prof")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    Path(f"{stem}.txt").write_text(text.getvalue())


def _signals(po: Postoffice) -> None:
    """SIGUSR1 / SIGTERM (Slurm before a time limit, preemption): the scheduler
    writes a checkpoint and stops the job; the other ranks wait for it."""
    def request_stop(signum, frame):
        po.stop_requested = signal.Signals(signum).name
        po.stop_requested_at = time.monotonic()
        # at once: after a lost host the launcher's SIGKILL may follow soon
        write_status(po.cfg.job.output, "stopping", signal=po.stop_requested)

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, request_stop if po.is_scheduler else signal.SIG_IGN)


def _serve(po: Postoffice, app: App) -> None:
    server = KVServer(po)
    app.on_server_start(po, server)
    if po.cfg.checkpoint.resume:
        po.wait_until(lambda: server.resumed, lambda: "RESUME from the scheduler (rank 0)")
    po.barrier(ALL)  # start-up: every rank is ready, the model is loaded
    startup.mark("ready")
    stops = 0

    def stop(msg: Message) -> None:
        nonlocal stops
        stops += 1

    po.on(Op.STOP, stop)
    serving = time.perf_counter()
    po.serve_forever(lambda: stops > 0)
    result: dict[str, Any] = {"keys": server.num_keys, "bytes": server.nbytes,
                              "requests": server.requests,
                              "requests_by_position": server.keysets.requests,
                              "keysets_registered": server.keysets.registered,
                              "keysets_held": len(server.keysets),
                              "keyset_keys_resolved": server.keysets.resolved_keys,
                              "busy_seconds": round(server.busy_seconds, 6),
                              "serve_seconds": round(time.perf_counter() - serving, 6),
                              "startup": startup.steps()}
    result.update(app.on_server_stop(po, server))
    po.send(po.layout.scheduler, Message(op=Op.STOPPED, meta=Message.jmeta(result)))
    # Serve on until the job's end (a second STOP): a server that dies now
    # leaves ranges to their new owners, which the app may still ask for
    # (the linear app saves them into the model).
    po.serve_forever(lambda: stops > 1)


def _work(po: Postoffice, app: App) -> None:
    stopped = False

    def stop(msg: Message) -> None:
        nonlocal stopped
        stopped = True

    po.on(Op.STOP, stop)
    po.barrier(ALL)  # start-up: every rank is ready, the model is loaded
    startup.mark("ready")
    result = dict(app.run_worker(po) or {}, startup=startup.steps())
    po.finish_task()  # the job's end is a task boundary: nothing stays held in a filter
    po.send(po.layout.scheduler, Message(op=Op.DONE, meta=Message.jmeta(result)))
    # Wait for the end of the job here, politely, rather than spin in MPI_Finalize.
    po.serve_forever(lambda: stopped)
