"""Optional compiled kernels (numba, the ``fast`` extra), every one with a
numpy path that stays the reference and the fallback.

numba's import and a kernel's compilation take about a second, which must
not stall a request or a minibatch: :meth:`Kernel.prepare` loads a kernel in
a background thread, and until it is ready :meth:`Kernel.get` says None and
the caller takes its numpy path. ``MPIPS_NUMBA=0`` turns every kernel off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def numba_allowed() -> bool:
    return os.environ.get("MPIPS_NUMBA", "1") != "0"


class Kernel:
    """One compiled function, loaded at most once per process."""

    def __init__(self, name: str, load: Callable[[], Callable]):
        """``load`` imports the kernel's module (ImportError without numba),
        compiles it for the types it will see, and returns the function."""
        self.name = name
        self._load_fn = load
        self._fn: Callable | None = None
        self._started = False
        self._lock = threading.Lock()
        self._loaded = threading.Event()

    def load(self) -> Callable | None:
        """Load now (in this thread); the function, or None."""
        with self._lock:
            if not self._loaded.is_set():
                try:
                    if numba_allowed():
                        self._fn = self._load_fn()
                except ImportError:
                    pass
                finally:
                    self._loaded.set()
        return self._fn

    def prepare(self) -> None:
        """Load in a background thread (once); until then get() is None."""
        if not self._started:
            self._started = True
            threading.Thread(target=self.load, name=f"mpips-compile-{self.name}",
                             daemon=True).start()

    def get(self) -> Callable | None:
        """The function once loaded, else None (never waits for the compiler)."""
        return self._fn if self._loaded.is_set() else None

    def why_not(self) -> str:
        """Why get() is None, for benchmark labels."""
        if not numba_allowed():
            return "MPIPS_NUMBA=0"
        return "numba not installed: pip install 'mpips[fast]'" if self._loaded.is_set() \
            else "not loaded yet"
