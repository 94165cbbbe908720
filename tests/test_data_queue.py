"""PartitionQueue: exactly once per epoch, shuffling, requeue after a worker dies."""

from __future__ import annotations

import random

import pytest

from mpips.data import PartitionQueue, QueueError

PARTS = [f"p{i}" for i in range(7)]


def drain(queue: PartitionQueue, workers: list[int], rng: random.Random) -> list:
    """Workers of random speed take and finish tasks until the queue is done."""
    log = []
    held: dict[int, list] = {w: [] for w in workers}
    while not queue.finished:
        w = rng.choice(workers)
        if held[w] and rng.random() < 0.6:
            task = held[w].pop(0)
            queue.done(w, task)
            log.append(task)
        else:
            task = queue.next(w)
            if task is not None:
                held[w].append(task)
    return log


@pytest.mark.parametrize("shuffle", [False, True])
def test_each_partition_once_per_epoch(shuffle):
    queue = PartitionQueue(PARTS, epochs=3, shuffle=shuffle, seed=5)
    log = drain(queue, [0, 1, 2], random.Random(1))
    queue.check_exactly_once()
    for epoch in range(3):
        assert sorted(t.partition for t in log if t.epoch == epoch) == list(range(7))
    assert queue.next(0) is None and queue.remaining == 0


def test_shuffle_is_seeded_per_epoch():
    a = PartitionQueue(PARTS, epochs=2, shuffle=True, seed=5)
    b = PartitionQueue(PARTS, epochs=2, shuffle=True, seed=5)
    assert a.order(0) == b.order(0) and a.order(1) == b.order(1)
    assert a.order(0) != a.order(1)
    assert PartitionQueue(PARTS, shuffle=True, seed=6).order(0) != a.order(0)
    assert PartitionQueue(PARTS).order(0) == list(range(7))
    first = [a.next(0) for _ in range(7)]
    assert [t.partition for t in first] == a.order(0)


def test_requeue_hands_again_and_ignores_the_dead():
    queue = PartitionQueue(PARTS, epochs=2, shuffle=True, seed=3)
    lost = [queue.next(9), queue.next(9)]
    again = queue.requeue(9)
    assert [(t.epoch, t.partition) for t in again] == [(t.epoch, t.partition) for t in lost]
    assert all(t.attempt == 1 for t in again)
    nxt = queue.next(1)
    assert (nxt.partition, nxt.attempt) == (lost[0].partition, 1)
    with pytest.raises(QueueError, match="does not hold"):
        queue.done(9, lost[0])  # the dead worker's late report is refused
    queue.done(1, nxt)
    drain(queue, [1, 2], random.Random(2))
    queue.check_exactly_once()


def test_requeue_at_random_points():
    rng = random.Random(7)
    queue = PartitionQueue(PARTS, epochs=4, shuffle=True, seed=1)
    held: dict[int, list] = {w: [] for w in range(4)}
    while not queue.finished:
        w = rng.randrange(4)
        r = rng.random()
        if r < 0.05:
            queue.requeue(w)
            held[w] = []
        elif held[w] and r < 0.6:
            queue.done(w, held[w].pop(0))
        else:
            task = queue.next(w)
            if task is not None:
                held[w].append(task)
    queue.check_exactly_once()


def test_epoch_barrier():
    queue = PartitionQueue(PARTS[:2], epochs=2, epoch_barrier=True)
    a, b = queue.next(0), queue.next(1)
    assert queue.next(2) is None and not queue.finished  # epoch 1 waits for epoch 0
    queue.done(0, a)
    queue.done(1, b)
    assert queue.next(2).epoch == 1


def test_double_done_and_bad_arguments():
    queue = PartitionQueue(PARTS[:1])
    task = queue.next(0)
    queue.done(0, task)
    with pytest.raises(QueueError):
        queue.done(0, task)
    with pytest.raises(ValueError):
        PartitionQueue([])
    with pytest.raises(ValueError):
        PartitionQueue(PARTS, epochs=0)


def test_check_detects_missing_work():
    queue = PartitionQueue(PARTS[:2])
    queue.done(0, queue.next(0))
    with pytest.raises(QueueError, match="completed 0 times"):
        queue.check_exactly_once()


def test_a_worker_gets_its_partitions_again_next_epoch():
    from mpips.data import PartitionQueue
    q = PartitionQueue([f"p{i}" for i in range(6)], epochs=2, shuffle=True, seed=1)
    first: dict[int, set[int]] = {0: set(), 1: set()}
    for _ in range(3):
        for w in (0, 1):
            t = q.next(w)
            first[w].add(t.partition)
            q.done(w, t)
    again: dict[int, set[int]] = {0: set(), 1: set()}
    for _ in range(3):
        for w in (0, 1):
            t = q.next(w)
            assert t.epoch == 1
            again[w].add(t.partition)
            q.done(w, t)
    assert again == first  # key caches keep hitting
    q.check_exactly_once()


def test_hand_out_matches_the_scan_it_replaced():
    """The queue takes "the first pending task this worker did last epoch,
    else the first" from per-partition indexes; drive it and a plain scan of
    the pending tasks with the same random workload: the same tasks, in the
    same order."""
    import random

    from mpips.data.queue import PartitionQueue

    class Scan(PartitionQueue):
        def _take(self, worker):
            for task in list(self._pending):
                if self._last_worker[task.partition] == worker and task.attempt == 0:
                    self._pending.take_first_try([task.partition])
                    return task
            return self._pending.popleft()

    for seed in range(5):
        rng = random.Random(seed)
        parts = [f"p{i}" for i in range(23)]
        fast, ref = (cls(parts, epochs=4, shuffle=True, seed=seed)
                     for cls in (PartitionQueue, Scan))
        held = {w: [] for w in range(6)}
        while not fast.finished:
            w = rng.randrange(6)
            action = rng.random()
            if action < 0.55:
                a, b = fast.next(w), ref.next(w)
                assert a == b
                if a is not None:
                    held[w].append(a)
            elif action < 0.95 and held[w]:
                t = held[w].pop(rng.randrange(len(held[w])))
                fast.done(w, t)
                ref.done(w, t)
            elif action >= 0.99:
                assert fast.requeue(w) == ref.requeue(w)
                held[w] = []
            assert list(fast._pending) == list(ref._pending)
        fast.check_exactly_once()
