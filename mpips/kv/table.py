"""Tables: named key-value maps of one job, each with vdim, dtype and handle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .handles import Add, Handle

VALUE_DTYPES = ("float32", "float64", "int32", "int64")


@dataclass(frozen=True)
class Table:
    """What every rank knows of a table. Declared identically on all ranks
    (the position in the job's table list is its wire id)."""

    name: str
    vdim: int = 1
    dtype: str = "float32"
    handle: Handle = field(default_factory=Add)
    # Server storage for this table: None is the general SortedStore. An app
    # may give a factory ``store(table) -> object`` with the same methods
    # (vdim, push, pull, pushpull, __len__, nbytes): a count-min sketch, say.
    store: Callable[[Table], Any] | None = None

    def __post_init__(self) -> None:
        if self.vdim < 1:
            raise ValueError(f"table {self.name!r}: vdim must be >= 1, got {self.vdim}")
        if str(np.dtype(self.dtype)) not in VALUE_DTYPES:
            raise ValueError(f"table {self.name!r}: dtype must be one of {VALUE_DTYPES}, "
                             f"got {self.dtype!r}")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)
