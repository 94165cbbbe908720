"""A hand-written parameter server, for benchmarks only.

What a user writes with mpi4py in an afternoon: pickled messages
(``comm.send``/``comm.recv``), a Python dict from key to value on the server,
a Python loop over the keys of each request. ``bench kv`` runs it between the
same ranks, in the same run, to show what the vectorised data path buys.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

TAG_NAIVE = 3


def naive_request(comm: MPI.Comm, op: str, parts: list[tuple[int, np.ndarray,
                  np.ndarray | None]]) -> list[object]:
    """Send (op, keys, values) to each server and wait for every answer."""
    for dest, keys, vals in parts:
        comm.send((op, keys, vals), dest=dest, tag=TAG_NAIVE)
    return [comm.recv(source=dest, tag=TAG_NAIVE) for dest, _, _ in parts]


def naive_serve(comm: MPI.Comm, requests: int, store: dict[int, object]) -> None:
    """Answer ``requests`` requests from any worker, one key at a time."""
    status = MPI.Status()
    for _ in range(requests):
        op, keys, vals = comm.recv(source=MPI.ANY_SOURCE, tag=TAG_NAIVE, status=status)
        if op in ("push", "pushpull"):
            for k, v in zip(keys.tolist(), vals.tolist(), strict=True):
                store[k] = store.get(k, 0.0) + v[0] if len(v) == 1 else \
                    [a + b for a, b in zip(store.get(k, [0.0] * len(v)), v, strict=True)]
        reply = None
        if op in ("pull", "pushpull"):
            reply = [store.get(k, 0.0) for k in keys.tolist()]
        comm.send(reply, dest=status.Get_source(), tag=TAG_NAIVE)
