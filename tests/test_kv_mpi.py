"""Multi-rank runs of the kv layer under mpiexec, each with a hard timeout."""

import re

import pytest

from tests.mpitools import ROOT, run_mpi, run_py

pytestmark = pytest.mark.integration


def test_transport_under_pytest_mpi():
    proc = run_mpi(2, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-mpi",
                   str(ROOT / "tests" / "test_van_mpi.py"), timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = run_py("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                       str(ROOT / "tests" / "test_van_mpi.py"))
    tests = int(re.search(r"(\d+) tests? collected", collected.stdout).group(1))
    assert tests and f"{tests} passed" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("n,servers,virtual,chunk,coalesce", [
    (3, 1, 1, 0, 0), (5, 2, 1, 1024, 0), (6, 2, 3, 0, 0), (5, 2, 1, 0, 1 << 16)])
def test_counts_are_exact(n, servers, virtual, chunk, coalesce):
    """W workers push +1 to random key sets over S servers: pulls are exact
    (also with requests of 2000 keys cut into chunks of 1024, and with small
    requests batched into bundles)."""
    proc = run_mpi(n, "python", "tests/progs/kv_job.py", "counts",
                   f"layout.servers={servers}", f"layout.virtual_servers={virtual}",
                   f"kv.chunk_keys={chunk}", f"kv.coalesce_bytes={coalesce}",
                   "transport.timeout=60", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = n - 1 - servers
    assert proc.stdout.count("keys exact") == workers
    if coalesce:  # the batching took place
        assert "; 0 bundles sent" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("n,servers,virtual,chunk,coalesce", [
    (3, 1, 1, 0, 0), (6, 2, 3, 1024, 0), (5, 2, 1, 0, 1 << 16)])
def test_counts_are_exact_with_key_sets(n, servers, virtual, chunk, coalesce):
    """Half the rounds go as positions into a registered key set, half as
    keys, onto the same stores: counts stay exact, and the servers did serve
    requests by position."""
    proc = run_mpi(n, "python", "tests/progs/kv_job.py", "counts",
                   f"layout.servers={servers}", f"layout.virtual_servers={virtual}",
                   f"kv.chunk_keys={chunk}", f"kv.coalesce_bytes={coalesce}",
                   "transport.timeout=60", timeout=120, env={"MPIPS_TEST_KEYSET": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("keys exact") == n - 1 - servers
    served = [int(m) for m in re.findall(r"(\d+) requests by key set position", proc.stdout)]
    assert len(served) == servers and min(served) > 0, proc.stdout[-2000:]


def test_the_layout_and_ring_are_written_and_shared_hosts_are_said(tmp_path):
    import json
    proc = run_mpi(5, "python", "tests/progs/kv_job.py", "counts", "layout.servers=2",
                   "layout.replication=1", f"job.output={tmp_path}", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one machine: every replica is on its owner's host, and the job says so
    assert "warning: replication 1 with servers on 1 host(s)" in proc.stdout
    layout = json.loads((tmp_path / "layout.json").read_text())
    assert [r["role"] for r in layout["ranks"]] == ["scheduler", "server", "server",
                                                     "worker", "worker"]
    assert len(layout["ranges"]) == 2
    for r in layout["ranges"]:
        assert {r["owner"], *r["replicas"]} == {1, 2} and r["hosts"] == [0, 0]


def test_work_queue_hands_each_partition_once_per_epoch():
    proc = run_mpi(5, "python", "tests/progs/kv_job.py", "queue", "layout.servers=1",
                   timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every partition exactly once per epoch" in proc.stdout
    taken = [int(line.split()[3]) for line in proc.stdout.splitlines()
             if " took " in line]
    assert sum(taken) == 23 * 3 and len(taken) == 3


def test_filters_hold_nothing_back_after_a_task():
    """Pushed mass = mass on the servers + mass the significant filter holds,
    at every push; zero held at every task boundary (it is flushed there)."""
    proc = run_mpi(3, "python", "tests/progs/kv_job.py", "flush", "layout.servers=1",
                   'filters.push=["significant"]', "filters.significant_threshold=0.5",
                   timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "flush: 12 tasks" in proc.stdout and "none after each" in proc.stdout


def test_a_rank_that_raises_ends_the_job_quickly():
    """The job ends (a hang would hit the timeout) with one message naming the rank."""
    proc = run_mpi(5, "python", "tests/progs/kv_job.py", "raise", "layout.servers=2",
                   timeout=60)
    assert proc.returncode != 0
    err = proc.stderr
    assert "mpips: rank 4 (worker 1) failed: RuntimeError: injected failure" in err
    assert err.count("failed: RuntimeError") == 1  # said once


def test_bench_kv_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = run_mpi(5, "python", "-m", "mpips", "bench", "kv", "--servers", "2",
                   "--keys", "100000", "--repeat", "3", "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["op"], r["lists"]) for r in rows} == {
        ("push", "repeated"), ("pull", "repeated"), ("pushpull", "repeated"),
        ("pull", "fresh"), ("pushpull", "fresh"),  # fresh lists: a new one per request
        ("pull", "keyset"), ("pushpull", "keyset")}  # the same, by key set position
    assert sorted({r["keys"] for r in rows}) == [1000, 10000, 100000]
    assert "fresh lists / repeated list: pull 1e+03" in proc.stdout
    assert "fresh lists by key set / repeated list: pull 1e+03" in proc.stdout
    for r in rows:
        assert r["servers"] == 2 and r["workers"] == 2 and r["vdim"] == 1
        assert r["keys_per_s"] > 0 and r["bytes_per_s"] > 0 and r["mpi_bytes_per_s"] > 0
    assert "kv/MPI" in proc.stdout and "interleaved rounds" in proc.stdout
    for keys in (1000, 10000, 100000):  # every kind of list at every size, timed
        kinds = {(r["op"], r["lists"]): r["reps"] for r in rows if r["keys"] == keys}
        assert len(kinds) == 7 and kinds[("push", "repeated")] == 3, kinds
        assert kinds[("pull", "fresh")] == kinds[("pull", "keyset")] == 3, kinds


def test_bench_scale_fills_and_sweeps():
    proc = run_mpi(4, "python", "-m", "mpips", "bench", "scale", "--servers", "2",
                   "-o", "scale.params=2e6", "-o", "scale.batch=500000", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bench scale: 2e+06 float32 parameters on 2 servers" in proc.stdout
    assert "values checked" in proc.stdout


def test_bench_store_reports_rates_and_bytes(tmp_path):
    import json

    from tests.mpitools import run_py
    out = tmp_path / "store.jsonl"
    proc = run_py("-m", "mpips", "bench", "store", "--sizes", "2e5", "--batch", "5e4",
                  "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["handle"] for r in rows] == ["Add", "AdaGrad"]
    assert rows[0]["bytes_per_param"] <= 20 and rows[1]["bytes_per_param"] <= 28
    assert all(r["inserts_per_s"] > 0 and r["lookups_per_s"] > 0 for r in rows)
    assert all(r["small_inserts_per_s"] > 0 and r["rss_bytes_per_param"] is not None
               for r in rows)


def test_bench_path_times_every_stage(tmp_path):
    import json

    from tests.mpitools import run_py
    out = tmp_path / "path.jsonl"
    proc = run_py("-m", "mpips", "bench", "path", "--sizes", "1e3,2e4", "--json", str(out),
                  timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["keys"] for r in rows] == [1000, 20000]
    for r in rows:
        assert len(r["stages_s"]) == 12 and all(v > 0 for v in r["stages_s"].values())
        assert r["round trip, repeated list"] > 0 and r["round trip, new list"] > 0
    assert "server: store, new list (search)" in proc.stdout


def test_a_receiver_does_not_block_on_a_slow_peer():
    """With Open MPI's single copy off, a large message moves only while its
    sender calls MPI (as over TCP): a rank busy computing must not hold up
    the receiver, which serves another rank's later message first."""
    proc = run_mpi(3, "python", "tests/progs/slow_peer.py", timeout=60,
                   env={"OMPI_MCA_smsc": "^cma"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("first from"))
    words = line.replace(",", "").split()
    assert words[3] == "2" and float(words[5]) < 1.0, line  # rank 2's, well before 1.5 s
