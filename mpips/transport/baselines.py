"""Baselines for benchmarks only: what kv is measured against between the
same ranks, in the same run. Not used by any job.

- Plain MPI (:func:`raw_exchange`, :func:`raw_serve`): the same bytes to and
  from the same servers with Isend/Irecv on a tag of their own, no framing,
  no store: the ceiling of any data path over this MPI.
- A hand-written parameter server (:func:`naive_request`,
  :func:`naive_serve`): what a user writes with mpi4py in an afternoon,
  pickled messages (``comm.send``/``comm.recv``), a Python dict from key to
  value on the server, a Python loop over the keys of each request.
"""

from __future__ import annotations

import numpy as np

from .van import MPI, Van, yield_core

TAG_RAW = 2  # the van's data tags are 1 and 4
TAG_NAIVE = 3


def raw_exchange(van: Van, peers: list[int], out: list[np.ndarray],
                 inbox: list[np.ndarray]) -> None:
    """Send ``out[i]`` to and receive ``inbox[i]`` from each ``peers[i]``
    with plain Isend/Irecv, and wait for all."""
    comm = van.comm
    reqs = [comm.Irecv([b, MPI.BYTE], p, TAG_RAW) for p, b in zip(peers, inbox, strict=True)]
    reqs += [comm.Isend([b, MPI.BYTE], p, TAG_RAW) for p, b in zip(peers, out, strict=True)]
    while not MPI.Request.Testall(reqs):
        yield_core()


def raw_serve(van: Van, peers: list[int], nbytes_in: list[int], nbytes_out: list[int],
              reps: int) -> None:
    """The server side of :func:`raw_exchange` for several peers at once:
    ``reps`` times, receive from all, then send to all."""
    comm = van.comm
    inbox = [np.empty(n, dtype=np.uint8) for n in nbytes_in]
    out = [np.zeros(n, dtype=np.uint8) for n in nbytes_out]
    for _ in range(reps):
        reqs = [comm.Irecv([b, MPI.BYTE], p, TAG_RAW) for p, b in zip(peers, inbox, strict=True)]
        while not MPI.Request.Testall(reqs):
            yield_core()
        reqs = [comm.Isend([b, MPI.BYTE], p, TAG_RAW) for p, b in zip(peers, out, strict=True)]
        while not MPI.Request.Testall(reqs):
            yield_core()




def naive_request(van: Van, op: str, parts: list[tuple[int, np.ndarray,
                  np.ndarray | None]]) -> list[object]:
    """Send (op, keys, values) to each server and wait for every answer."""
    comm = van.comm
    for dest, keys, vals in parts:
        comm.send((op, keys, vals), dest=dest, tag=TAG_NAIVE)
    return [comm.recv(source=dest, tag=TAG_NAIVE) for dest, _, _ in parts]


def naive_serve(van: Van, requests: int, store: dict[int, object]) -> None:
    """Answer ``requests`` requests from any worker, one key at a time."""
    comm = van.comm
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
