"""The scheduler's barriers, driven without MPI: counted per arrival, one
release per member, the dead neither waited for nor released."""

from types import SimpleNamespace

from mpips.layout import make_layout
from mpips.postoffice import ALL, WORKERS
from mpips.scheduler.core import Scheduler
from mpips.transport.message import Message, Op


def fake_scheduler(n: int, servers: int = 2):
    sent = []
    po = SimpleNamespace(van=SimpleNamespace(size=n, dead=set()),
                         layout=make_layout(n, servers),
                         send=lambda r, m: sent.append((r, m)))
    sched = object.__new__(Scheduler)
    sched.po, sched.arrived = po, {}
    return sched, po, sent


def arrive(sched, rank: int, group: int, bid: int = 0) -> None:
    msg = Message(op=Op.BARRIER, flags=group, aux=bid)
    msg.sender = rank
    sched._barrier(msg)


def test_a_barrier_releases_every_member_once_when_the_last_arrives():
    sched, po, sent = fake_scheduler(10)
    for r in range(1, 9):
        arrive(sched, r, ALL)
    assert sent == []
    arrive(sched, 9, ALL)
    assert sorted(r for r, _ in sent) == list(range(1, 10))
    assert all(m.op == Op.RELEASE and m.json() == [] for _, m in sent)
    assert sched.arrived == {}


def test_the_dead_are_not_waited_for_and_the_release_names_them():
    sched, po, sent = fake_scheduler(8)
    workers = po.layout.workers
    for w in workers[:-2]:
        arrive(sched, w, WORKERS, 3)
    arrive(sched, workers[-2], WORKERS, 3)   # arrives, then dies
    po.van.dead.add(workers[-2])
    arrive(sched, workers[0], WORKERS, 3)  # a repeat changes nothing
    assert sent == []  # the last live worker is still missing
    po.van.dead.add(workers[-1])  # it dies too: the barrier is complete
    sched.release_barriers()
    assert sorted(r for r, _ in sent) == sorted(workers[:-2])
    assert sent[0][1].json() == sorted(workers[-2:])
