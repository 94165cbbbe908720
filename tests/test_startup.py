"""Start-up steps: marked once, reported after launch, slowest rank per step."""

import time

from mpips import startup


def test_steps_are_seconds_after_launch_in_the_order_reached(monkeypatch):
    launched = time.time() - 2.0
    monkeypatch.setenv(startup.LAUNCH_ENV, f"{launched:.6f}")
    monkeypatch.setattr(startup, "_marks", {})
    startup.mark("b")
    startup.mark("a")
    first = startup.steps()["b"]
    startup.mark("b")  # a second mark of a step keeps the first
    got = startup.steps()
    assert list(got)[-2:] == ["b", "a"] and got["b"] == first
    assert 2.0 <= got["b"] <= got["a"] < 60.0
    assert "spawned" in got and got["spawned"] <= got["b"]  # this process began before


def test_without_a_launch_time_steps_count_from_the_process_start(monkeypatch):
    monkeypatch.delenv(startup.LAUNCH_ENV, raising=False)
    monkeypatch.setattr(startup, "_marks", {})
    startup.mark("x")
    got = startup.steps()
    assert "spawned" not in got and got["x"] > 0


def test_the_slowest_rank_decides_each_step_and_the_line_names_them():
    latest = startup.slowest([{"imported": 0.5, "ready": 1.0},
                              {"imported": 0.7, "ready": 0.9, "first push": 1.2}])
    assert latest == {"imported": 0.7, "ready": 1.0, "first push": 1.2}
    assert startup.line(latest) == ("start-up (s after launch, slowest rank): "
                                    "imported 0.70, ready 1.00, first push 1.20")


def _imports(code: str) -> set[str]:
    import subprocess
    import sys
    code += "\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return set(out.split())


def test_the_scheduler_and_servers_of_a_linear_job_start_without_scipy():
    """What every rank imports before its role (the command line, a job's
    config with every app's section, the linear app, the runtime) leaves
    scipy.sparse to the workers: start-up is CPU-bound on shared cores."""
    got = _imports("from mpips import cli, config, runtime\nconfig.declare_all()\n"
                   "import mpips.apps.linear.app, mpips.apps.lda.app, mpips.apps.bpg\n"
                   "cli.parser(['train', 'job.toml'])")
    assert "mpips.apps.linear.app" in got and "mpips.runtime" in got
    assert not {m for m in got if m.split(".")[0] == "scipy"}


def test_the_command_line_reads_a_benchmarks_options_only_when_it_runs_it():
    got = _imports("from mpips import cli\ncli.parser(['train', 'job.toml'])")
    assert not {m for m in got if m.startswith(("mpips.bench.", "mpips.launch",
                                                "mpips.apps.sketch.cli"))}
    got = _imports("from mpips import cli\ncli.parser(['bench', 'peers'])")
    assert "mpips.bench.peers" in got and "mpips.bench.store" not in got


def test_a_job_loads_the_sections_it_names_and_the_others_when_read():
    """A linear job's ranks import no other app to read its config; a
    section it did not name still reads as its defaults, and the config as a
    whole (what a checkpoint keeps) has every section."""
    got = _imports("from mpips import config\n"
                   "cfg = config.load('jobs/demo.toml', ['data.minibatch=10'])\n"
                   "assert cfg.data.minibatch == 10 and cfg.linear.minibatch == 1000")
    assert "mpips.apps.linear.app" in got
    assert not {m for m in got if m.startswith(("mpips.apps.lda", "mpips.apps.sketch",
                                                "mpips.apps.bpg", "mpips.bench."))}
    from mpips import config
    cfg = config.load(None, [])
    assert cfg.lda.topics == config.load(None, ["lda.topics=" + str(cfg.lda.topics)]).lda.topics
    assert set(cfg.as_dict()) == set(config.SECTIONS)


def test_a_worker_imports_what_it_needs_before_mpi_starts_and_the_others_do_not():
    """Ranks learn their role from the launcher's variables before MPI_Init
    (a hint, from a one-host layout): an LDA worker's scipy.sparse import then
    overlaps the other ranks' start-up instead of following MPI_Init. A
    linear worker needs no scipy at all: it builds and trains on its
    minibatches with numpy alone."""
    from mpips.layout import SCHEDULER, SERVER, WORKER, likely_role
    assert likely_role({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}) == SCHEDULER
    assert likely_role({"PMI_RANK": "1", "PMI_SIZE": "4"}, servers=1) == SERVER
    assert likely_role({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, servers=1) == WORKER
    assert likely_role({}) is None  # no launcher: no guess
    assert likely_role({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}) is None
    # before_mpi reads nothing of the app: an instance without data will do
    code = ("from mpips.apps.lda.app import LdaApp\n"
            "object.__new__(LdaApp).before_mpi({!r})")
    for role, wants in ((WORKER, True), (SERVER, False), (SCHEDULER, False), (None, False)):
        got = _imports(code.format(role))
        assert ("scipy.sparse" in got) == wants, role
    got = _imports(
        "import numpy as np\nfrom mpips.apps.linear.model import gradient, make_batch\n"
        "b = make_batch(np.array([0, 2, 3]), np.array([5, 9, 5], np.uint64), None,\n"
        "               np.array([1, 0]), bias=True)\n"
        "gradient('logistic', b.X, b.y, np.zeros(b.keys.size))")
    assert not {m for m in got if m.split(".")[0] == "scipy"}
