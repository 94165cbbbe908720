"""Server-side update handles: how a pushed value changes a stored one.

A handle is a vectorised function over the rows of one request::

    handle(value, pushed, state) -> None

``value`` (n, vdim) holds the stored rows for the request's keys and is
changed in place; ``pushed`` (n, vdim) is what the worker sent; ``state`` maps
the handle's per-key state names (``handle.state``) to (n, vdim) arrays, also
changed in place. ``handle.init`` fills the rows of keys seen for the first
time. Any callable with these attributes is a user handle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Handle:
    """Base: a named handle with per-key state names and an initial value."""

    state: tuple[str, ...] = ()
    init: float = 0.0

    def __call__(self, value: np.ndarray, pushed: np.ndarray,
                 state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Assign(Handle):
    """The stored value becomes the pushed value."""

    def __call__(self, value, pushed, state):
        value[...] = pushed


@dataclass(frozen=True)
class Add(Handle):
    """Pushed values are added: counters, gradient sums, count-min rows."""

    def __call__(self, value, pushed, state):
        value += pushed


@dataclass(frozen=True)
class SGD(Handle):
    """``w -= lr * g``: pushed values are gradients."""

    lr: float = 0.1

    def __call__(self, value, pushed, state):
        value -= np.asarray(self.lr, dtype=value.dtype) * pushed


@dataclass(frozen=True)
class AdaGrad(Handle):
    """``acc += g*g; w -= lr * g / sqrt(acc + eps)``, per coordinate."""

    lr: float = 0.1
    eps: float = 1e-8
    state: tuple[str, ...] = ("acc",)

    def __call__(self, value, pushed, state):
        acc = state["acc"]
        acc += pushed * pushed
        value -= self.lr * pushed / np.sqrt(acc + self.eps)


@dataclass(frozen=True)
class UserHandle(Handle):
    """Wrap a plain function ``f(value, pushed, state)`` as a handle."""

    fn: Callable[[np.ndarray, np.ndarray, dict[str, np.ndarray]], None] | None = None

    def __call__(self, value, pushed, state):
        assert self.fn is not None
        self.fn(value, pushed, state)


BUILTIN: dict[str, type[Handle]] = {"assign": Assign, "add": Add, "sgd": SGD,
                                    "adagrad": AdaGrad}
