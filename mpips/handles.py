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


# ---- optimizers with regularisation (sparse linear models; issue 4) ----------------
def _soft_threshold(w: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """The proximal step of ``t * |w|``: shrink towards 0 by ``t``, stop at 0."""
    return np.sign(w) * np.maximum(np.abs(w) - t, 0.0)


@dataclass(frozen=True)
class DecayingSGD(Handle):
    """SGD whose rate falls with the updates a key has seen, then an L1 prox step.

    ``t += 1; eta = lr / (1 + decay * t) ** power; w = prox_l1(w - eta * g, eta * l1)``.
    The count is per key (state ``t``): rare features keep larger steps, as with
    AdaGrad, and the servers need no global clock. ``decay = 0`` is plain SGD.
    """

    lr: float = 0.1
    decay: float = 0.0
    power: float = 0.5
    l1: float = 0.0
    state: tuple[str, ...] = ("t",)

    def __call__(self, value, pushed, state):
        t = state["t"]
        t += 1
        eta = self.lr / (1.0 + self.decay * t) ** self.power
        value -= eta * pushed
        if self.l1:
            value[...] = _soft_threshold(value, eta * self.l1)


@dataclass(frozen=True)
class AdaGradL1(Handle):
    """AdaGrad followed by the L1 prox step with the same per-coordinate rate:
    ``acc += g*g; eta = lr / sqrt(acc + eps); w = prox_l1(w - eta * g, eta * l1)``."""

    lr: float = 0.1
    eps: float = 1e-8
    l1: float = 0.0
    state: tuple[str, ...] = ("acc",)

    def __call__(self, value, pushed, state):
        acc = state["acc"]
        acc += pushed * pushed
        eta = self.lr / np.sqrt(acc + self.eps)
        value -= eta * pushed
        if self.l1:
            value[...] = _soft_threshold(value, eta * self.l1)


@dataclass(frozen=True)
class FTRLProximal(Handle):
    """FTRL-Proximal (McMahan et al., KDD 2013), per coordinate, state ``z`` and ``n``.

    ``sigma = (sqrt(n + g*g) - sqrt(n)) / alpha; z += g - sigma * w; n += g*g``, then
    ``w = 0`` where ``|z| <= l1``, else ``-(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2)``.
    The stored value is ``w`` itself, so pulls need no extra work. ``l1`` and ``l2``
    act on the sum of pushed gradients (the paper's units), not on a mean loss.
    """

    alpha: float = 0.1
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0
    state: tuple[str, ...] = ("z", "n")

    def __call__(self, value, pushed, state):
        z, n = state["z"], state["n"]
        n_new = n + pushed * pushed
        sigma = (np.sqrt(n_new) - np.sqrt(n)) / self.alpha
        z += pushed - sigma * value
        n[...] = n_new
        shrunk = z - np.sign(z) * self.l1
        w = -shrunk / ((self.beta + np.sqrt(n)) / self.alpha + self.l2)
        value[...] = np.where(np.abs(z) > self.l1, w, 0.0)


BUILTIN.update({"sgd_decay": DecayingSGD, "adagrad_l1": AdaGradL1, "ftrl": FTRLProximal})
