"""JSON gather and broadcast for tools that run alone or under a launcher
(convert, synth, predict): a tiny communicator facade.

mpi4py is imported only when the process was started by an MPI launcher, so
the tools work on a machine without MPI. Messages are JSON text sent as byte
buffers (no pickle).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


class Comm:
    """rank, size, and JSON gather/broadcast; one process without MPI."""

    def __init__(self) -> None:
        self.mpi: Any = None
        self.rank, self.size = 0, 1
        if any(v in os.environ for v in _LAUNCHER_VARS):
            from .van import MPI  # MPIUnavailable where MPI cannot load

            if MPI.COMM_WORLD.Get_size() > 1:
                self.mpi = MPI.COMM_WORLD
                self.rank, self.size = self.mpi.Get_rank(), self.mpi.Get_size()

    def gather_json(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
        if self.mpi is None:
            return [obj]
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
        sizes = np.zeros(self.size, np.int64) if self.rank == 0 else None
        self.mpi.Gather(np.array([data.size], np.int64), sizes, root=0)
        if self.rank != 0:
            self.mpi.Gatherv(data, None, root=0)
            return None
        out = np.empty(int(sizes.sum()), np.uint8)
        self.mpi.Gatherv(data, (out, sizes), root=0)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return [json.loads(out[offsets[r]:offsets[r + 1]].tobytes()) for r in range(self.size)]

    def bcast_json(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.mpi is None:
            return obj
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.rank == 0 else None
        size = np.array([0 if data is None else data.size], np.int64)
        self.mpi.Bcast(size, root=0)
        buf = data.copy() if data is not None else np.empty(int(size[0]), np.uint8)
        self.mpi.Bcast(buf, root=0)
        return json.loads(buf.tobytes())
