"""Transport tests that run on every rank of ``mpiexec -n 2 python -m pytest
--with-mpi tests/test_van_mpi.py`` (pytest-mpi); tests/test_kv_mpi.py starts
that run. Without --with-mpi, pytest-mpi skips them."""

import numpy as np
import pytest


def _van():
    from mpips.transport import Van
    return Van(idle_sleep=1e-4)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("nkeys", [0, 10, 100_000])  # small (packed) and large (gathered)
def test_send_and_receive_framed_buffers(nkeys):
    from mpips.transport import Message, Op
    van = _van()
    if van.rank > 1:
        return
    keys = np.arange(nkeys, dtype=np.uint64) * np.uint64(3)
    vals = np.arange(2 * nkeys, dtype=np.float32).reshape(nkeys, 2)
    got = []
    if van.rank == 0:
        for ts in range(3):  # several in flight: order between a pair is kept
            van.send(1, Message(op=Op.PUSH, ts=ts, keys=[keys[: nkeys // 2], keys[nkeys // 2:]],
                                vals=vals, vdim=2))
        van.wait_for(lambda m: got.append(m) or True, 30, lambda: "ack from rank 1")
        assert got[0].op == Op.PUSH_ACK and got[0].aux == 3 * nkeys
    else:
        van.wait_for(lambda m: got.append(m) or len(got) == 3, 30, lambda: "pushes from 0")
        assert [m.ts for m in got] == [0, 1, 2]
        for m in got:
            assert m.sender == 0
            np.testing.assert_array_equal(m.keys, keys)
            np.testing.assert_array_equal(m.vals, vals)
        van.send(0, Message(op=Op.PUSH_ACK, aux=sum(m.keys.size for m in got)))
    assert van.flush(30)


@pytest.mark.mpi(min_size=2)
def test_wait_for_times_out_naming_what():
    from mpips.transport import TransportTimeout
    van = _van()
    with pytest.raises(TransportTimeout, match="timed out after 0.2 s: reply from nobody"):
        van.wait_for(lambda m: True, 0.2, lambda: "reply from nobody")


@pytest.mark.mpi(min_size=2)
def test_host_ids_are_consistent():
    van = _van()
    ids = van.host_ids()
    assert len(ids) == van.size and ids[van.rank] <= van.rank


@pytest.mark.mpi(min_size=2)
def test_deferred_small_messages_go_as_one_bundle_in_order():
    """With coalescing, deferred messages wait for the sender's next poll and
    go as one MPI message; a message sent without defer (here a large, split
    one) first flushes what waits, so the receiver sees the order of sends."""
    from mpips.transport import Message, Op, Van
    van = Van(idle_sleep=1e-4, coalesce_bytes=1 << 16)
    if van.rank > 1:
        return
    big = np.arange(50_000, dtype=np.uint64)
    if van.rank == 0:
        for ts in range(5):
            van.send(1, Message(op=Op.PUSH, ts=ts, keys=np.arange(ts, dtype=np.uint64),
                                meta=b"m" * ts), defer=True)
        assert van.messages_sent == 5 and van.bundles_sent == 0  # all still waiting
        van.send(1, Message(op=Op.PUSH, ts=5, keys=big))  # flushes the five first
        van.send(1, Message(op=Op.PUSH, ts=6, keys=big[:3]), defer=True)
        got = []
        van.wait_for(lambda m: got.append(m) or True, 30, lambda: "ack from rank 1")
        assert van.bundles_sent == 1 and got[0].aux == 7
    else:
        got = []
        van.wait_for(lambda m: got.append(m) or len(got) == 7, 30, lambda: "7 from rank 0")
        assert [m.ts for m in got] == list(range(7))
        assert [m.bundled for m in got] == [True] * 5 + [False, False]
        for m in got[:5]:
            assert m.keys.tolist() == list(range(m.ts)) and m.meta == b"m" * m.ts
        np.testing.assert_array_equal(got[5].keys, big)
        van.send(0, Message(op=Op.PUSH_ACK, aux=len(got)))
    assert van.flush(30)
