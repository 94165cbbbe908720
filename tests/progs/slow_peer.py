"""Run under ``mpiexec -n 3`` by tests/test_kv_mpi.py, with Open MPI's CMA
single copy off (OMPI_MCA_smsc=^cma), so that a large message moves only
while its sender calls into MPI, as over TCP.

Rank 0 sends rank 1 a large (split) message, then computes for BUSY seconds
without calling MPI; rank 2 then sends rank 1 a small message. Rank 1 must
hand over rank 2's message long before rank 0's: a receiver does not block
on a slow peer. It prints what it saw, when.
"""

import time

import numpy as np

from mpips.transport import Message, Op, Van

BUSY = 1.5

van = Van(idle_sleep=1e-4)
if van.rank == 0:
    big = np.arange(2_000_000, dtype=np.uint64)
    van.send(1, Message(op=Op.PUSH, ts=1, keys=big))
    van.send(2, Message(op=Op.APP))  # "I have sent it"
    t = time.perf_counter()
    x = 0
    while time.perf_counter() - t < BUSY:  # no MPI call here
        x += 1
    assert van.flush(30)
elif van.rank == 2:
    van.wait_for(lambda m: True, 30, lambda: "rank 0's go")
    van.send(1, Message(op=Op.PUSH, ts=2, keys=np.arange(3, dtype=np.uint64)))
    assert van.flush(30)
else:
    t0 = time.perf_counter()
    got = []
    van.wait_for(lambda m: got.append((m, time.perf_counter() - t0)) or len(got) == 2, 30,
                 lambda: "two messages")
    (first, t_first), (second, t_second) = got
    np.testing.assert_array_equal(second.keys, np.arange(2_000_000, dtype=np.uint64))
    print(f"first from rank {first.sender} after {t_first:.3f} s, "
          f"second from rank {second.sender} after {t_second:.3f} s", flush=True)
