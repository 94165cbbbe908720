"""The scheduler's barriers and the job's abort, driven without MPI: counted
per arrival, released down the host tree (one message per host, the leaders
pass it on), the dead neither waited for nor released; an abort reaches
every rank through the same tree."""

import contextlib
import io

import pytest

from mpips.app import App, Table
from mpips.bench.scheduler import CountingVan
from mpips.config import load
from mpips.postoffice import ABORT_JOB, ALL, WORKERS, JobAborted, Postoffice
from mpips.scheduler import Scheduler
from mpips.transport.message import Message, Op


class NoQueue(App):
    name = "barriers"

    def tables(self):
        return [Table("w", 1)]


def office(n: int, per_host: int | None, rank: int = 0, servers: int = 2, tmp="."):
    hosts = [0] * n if per_host is None else [r - r % per_host for r in range(n)]
    cfg = load(None, [f"layout.servers={servers}", f"job.output={str(tmp)!r}",
                      "layout.replication=1"])
    return Postoffice(cfg, [Table("w", 1)], van=CountingVan(n, hosts, rank=rank, keep=True))


def scheduler(n: int, per_host: int | None = None, servers: int = 2, tmp="."):
    po = office(n, per_host, servers=servers, tmp=tmp)
    with contextlib.redirect_stdout(io.StringIO()):
        return Scheduler(po, NoQueue(po.cfg)), po


def arrive(po, rank: int, group: int, bid: int = 0) -> None:
    msg = Message(op=Op.BARRIER, flags=group, aux=bid)
    msg.sender = rank
    po.dispatch(msg)


def sent(po, op=Op.RELEASE):
    return [(r, m) for r, m in po.van.sent if m.op == op]


def test_one_host_a_barrier_releases_every_member_once_when_the_last_arrives(tmp_path):
    sched, po = scheduler(10, tmp=tmp_path)
    for r in range(1, 9):
        arrive(po, r, ALL)
    assert sent(po) == []
    arrive(po, 9, ALL)
    assert sorted(r for r, _ in sent(po)) == list(range(1, 10))
    assert all(m.json() == [] for _, m in sent(po))
    assert sched.arrived == {}


def test_the_dead_are_not_waited_for_and_the_release_names_them(tmp_path):
    sched, po = scheduler(8, tmp=tmp_path)
    workers = po.layout.workers
    for w in workers[:-2]:
        arrive(po, w, WORKERS, 3)
    arrive(po, workers[-2], WORKERS, 3)   # arrives, then dies
    po.van.dead.add(workers[-2])
    arrive(po, workers[0], WORKERS, 3)  # a repeat changes nothing
    assert sent(po) == []  # the last live worker is still missing
    po.van.dead.add(workers[-1])  # it dies too: the barrier is complete
    sched.release_barriers()
    assert sorted(r for r, _ in sent(po)) == sorted(workers[:-2])
    assert sent(po)[0][1].json() == sorted(workers[-2:])


def relay(n: int, per_host: int, leader: int, msg: Message, tmp, servers: int):
    """What ``leader`` sends on receiving ``msg`` from the scheduler."""
    po = office(n, per_host, rank=leader, servers=servers, tmp=tmp)
    msg.sender = 0
    po.dispatch(msg)
    return po


def test_many_hosts_one_release_per_host_and_the_leaders_pass_it_on(tmp_path):
    n, per_host = 64, 8  # 8 hosts; rank 0's host: the scheduler leads ranks 1-7
    sched, po = scheduler(n, per_host, servers=16, tmp=tmp_path)
    for r in range(1, n):
        arrive(po, r, ALL)
    targets = sorted(r for r, _ in sent(po))
    leaders = list(range(per_host, n, per_host))
    assert targets == list(range(1, per_host)) + leaders
    reached = set(targets)
    for leader in leaders:
        msg = next(m for r, m in sent(po) if r == leader)
        lpo = relay(n, per_host, leader, Message(op=Op.RELEASE, flags=msg.flags,
                                                 aux=msg.aux, meta=msg.meta), tmp_path, 16)
        passed = sorted(r for r, _ in sent(lpo))
        assert passed == list(range(leader + 1, leader + per_host))
        reached |= set(passed)
        again = Message(op=Op.RELEASE, flags=msg.flags, aux=msg.aux, meta=msg.meta)
        again.sender = 0
        lpo.dispatch(again)  # a repeat is not passed on again
        assert len(sent(lpo)) == per_host - 1
    assert reached == set(range(1, n))


def test_a_workers_release_goes_only_where_workers_are(tmp_path):
    n, per_host = 32, 8
    sched, po = scheduler(n, per_host, servers=8, tmp=tmp_path)
    workers = set(po.layout.workers)
    for w in sorted(workers):
        arrive(po, w, WORKERS)
    for leader in {r for r, _ in sent(po)}:
        msg = next(m for r, m in sent(po) if r == leader)
        lpo = relay(n, per_host, leader, Message(op=Op.RELEASE, flags=WORKERS, aux=msg.aux,
                                                 meta=msg.meta), tmp_path, 8)
        assert {r for r, _ in sent(lpo)} <= workers  # servers are not told


def test_a_dead_leaders_ranks_get_the_last_release_again(tmp_path):
    n, per_host = 24, 8
    sched, po = scheduler(n, per_host, servers=6, tmp=tmp_path)
    for r in range(1, n):
        arrive(po, r, ALL)
    po.van.sent.clear()
    leader = 8  # died before it passed the release on
    po.van.dead.add(leader)
    failed = Message(op=Op.PEER_FAILED, aux=leader)
    failed.sender = leader
    with contextlib.redirect_stdout(io.StringIO()):
        po.dispatch(failed)
    again = sent(po)
    assert sorted(r for r, _ in again) == list(range(9, 16))
    assert all(m.flags == ALL and m.aux == 0 for _, m in again)
    # and the next barrier goes to them directly
    po.van.sent.clear()
    for r in range(1, n):
        if r != leader:
            arrive(po, r, ALL, 1)
    assert set(range(9, 16)) <= {r for r, _ in sent(po)}


def test_an_abort_goes_down_the_tree_and_reaches_every_rank(tmp_path):
    n, per_host = 32, 8
    failing = 13  # a member of host 8..15
    po = office(n, per_host, rank=failing, servers=8, tmp=tmp_path)
    po.abort_job("rank 13 failed", 3)
    first = sorted(r for r, _ in sent(po, Op.ABORT))
    assert first == [0, *range(1, 8), 8, 16, 24]  # scheduler's host, leaders
    reached = set(first)
    for leader in (8, 16, 24):
        lpo = office(n, per_host, rank=leader, servers=8, tmp=tmp_path)
        msg = Message(op=Op.ABORT, flags=ABORT_JOB, aux=3, meta=b"rank 13 failed")
        msg.sender = failing
        with pytest.raises(JobAborted) as e:
            lpo.dispatch(msg)
        assert e.value.code == 3
        passed = {r for r, _ in sent(lpo, Op.ABORT)}
        assert failing not in passed and leader not in passed
        reached |= passed
    assert reached | {failing} == set(range(n))


def test_a_rank_declared_dead_is_aborted_alone(tmp_path):
    lpo = office(32, 8, rank=8, servers=8, tmp=tmp_path)
    msg = Message(op=Op.ABORT, meta=b"declared dead")  # no ABORT_JOB: this rank only
    msg.sender = 0
    with pytest.raises(JobAborted):
        lpo.dispatch(msg)
    assert sent(lpo, Op.ABORT) == []


def test_bench_scheduler_prints_its_table_and_counts_one_message_per_host(tmp_path, capsys):
    import json

    from mpips.cli import main
    out = tmp_path / "sched.jsonl"
    assert main(["bench", "scheduler", "--ranks", "64,400", "--repeat", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "barrier ms" in text and "ring change ms" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ranks"] for r in rows] == [64, 400]
    for r in rows:  # hosts of 8: the scheduler's own 7 ranks and one leader per other host
        assert r["barrier_messages"] == 7 + r["hosts"] - 1
        assert r["heartbeat_messages"] == r["hosts"] - 1 + 7
        assert r["task_us"][1] > 0 and r["ring_change_ms"][1] > 0
