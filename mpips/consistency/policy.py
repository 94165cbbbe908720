"""Consistency policies as task dependencies.

Tasks carry integer timestamps 0, 1, 2, ... in the order the scheduler issues
them. A policy says which earlier tasks a task ``t`` depends on; the scheduler
holds ``t`` until every one of them has finished on every worker that takes
part in it (a global bound, not a local wait):

=====================  ===========================================  ===========
policy                 task t depends on                            also known
=====================  ===========================================  ===========
``sequential``         every task s < t                             BSP
``eventual``           none                                         ASP
``bounded_delay:tau``  every task s < t - tau                       SSP-like
``user``               an explicit DAG (``dag``) or a callable      anything
=====================  ===========================================  ===========

``bounded_delay:0`` is ``sequential``; a large tau approaches ``eventual``.
Dependencies always point to earlier timestamps: tasks are issued in
timestamp order, so an edge to a later task could never be satisfied.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol


class PolicyError(ValueError):
    """A policy that cannot be used; the message says why (the config layer
    adds key and file)."""


class Finished(Protocol):
    """What a policy may ask of the task clock."""

    watermark: int  # every task s < watermark has finished

    def is_finished(self, t: int) -> bool: ...


class Policy:
    """Base: ``ready(t, clock)`` says whether task ``t`` may start now."""

    name = "policy"
    tau: int | None = None  # the staleness bound it guarantees, None if none

    def ready(self, t: int, clock: Finished) -> bool:
        raise NotImplementedError

    def deps(self, t: int) -> Sequence[int] | range:
        """The tasks ``t`` waits for (for logs and tests)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


class BoundedDelay(Policy):
    """Every task older than ``t - tau`` has finished: ``watermark >= t - tau``.
    tau = 0 is sequential; ``tau=None`` is eventual (no dependencies)."""

    def __init__(self, tau: int | None):
        if tau is not None and tau < 0:
            raise PolicyError(f"tau must be >= 0, got {tau}")
        self.tau = tau
        self.name = ("eventual" if tau is None else "sequential" if tau == 0
                     else f"bounded_delay:{tau}")

    def ready(self, t: int, clock: Finished) -> bool:
        return self.tau is None or clock.watermark >= t - self.tau

    def deps(self, t: int) -> range:
        return range(0) if self.tau is None else range(max(0, t - self.tau))


class UserPolicy(Policy):
    """Dependencies from a function ``deps(t) -> iterable of earlier task ids``
    (an explicit DAG is one such function)."""

    def __init__(self, deps: Callable[[int], Iterable[int]], name: str = "user"):
        self._deps = deps
        self.name = name

    def deps(self, t: int) -> Sequence[int] | range:
        out = self._deps(t)
        if isinstance(out, range):  # a prefix of earlier tasks: checked in O(1)
            if out.step == 1 and out.stop > t:
                raise PolicyError(f"{self.name}: task {t} depends on later tasks {out}")
            return out
        out = [int(s) for s in out]
        later = [s for s in out if s >= t]
        if later:
            raise PolicyError(f"{self.name}: task {t} depends on task(s) {later} that are "
                              "not earlier: tasks are issued in timestamp order")
        return out

    def ready(self, t: int, clock: Finished) -> bool:
        deps = self.deps(t)
        if isinstance(deps, range) and deps.step == 1 and deps.start <= 0:
            return clock.watermark >= deps.stop
        return all(clock.is_finished(s) for s in deps)


def dag_deps(edges: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """``[[before, after], ...]`` as task -> its dependencies; raises
    :class:`PolicyError` on malformed edges, cycles or edges to earlier tasks."""
    deps: dict[int, list[int]] = {}
    for i, edge in enumerate(edges):
        if not (isinstance(edge, (list, tuple)) and len(edge) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                        for x in edge)):
            raise PolicyError(f"edge {i} is {edge!r}: an edge is [before, after], two task "
                              "ids >= 0")
        deps.setdefault(int(edge[1]), []).append(int(edge[0]))
    cycle = _find_cycle(deps)
    if cycle:
        raise PolicyError("has a cycle: " + " -> ".join(str(t) for t in cycle))
    for after, before in sorted(deps.items()):
        bad = [b for b in before if b >= after]
        if bad:
            raise PolicyError(f"edge [{bad[0]}, {after}] points back in time: task {after} "
                              f"cannot wait for task {bad[0]}, which is issued after it")
    return deps


def _find_cycle(deps: dict[int, list[int]]) -> list[int] | None:
    """A cycle of the dependency graph as a path, or None (iterative DFS)."""
    state: dict[int, int] = {}  # 1 on the stack, 2 done
    for root in sorted(deps):
        if state.get(root):
            continue
        stack: list[tuple[int, int]] = [(root, 0)]
        path = [root]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            succ = deps.get(node, [])
            if i == len(succ):
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            stack[-1] = (node, i + 1)
            nxt = succ[i]
            if state.get(nxt) == 1:
                # dependencies run backwards in time: print the cycle forwards
                return list(reversed(path[path.index(nxt):] + [nxt]))
            if not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, 0))
                path.append(nxt)
    return None


def load_callable(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function."""
    if ":" not in spec:
        raise PolicyError(f"{spec!r} is not of the form package.module:function")
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise PolicyError(f"cannot import {module!r}: {e}") from None
    except AttributeError:
        raise PolicyError(f"module {module!r} has no {attr!r}") from None
    if not callable(fn):
        raise PolicyError(f"{spec} is not callable")
    return fn


def parse_policy_name(text: str) -> tuple[str, int | None]:
    """``"bounded_delay:4"`` -> ("bounded_delay", 4); checks names and tau."""
    name, sep, arg = text.strip().partition(":")
    if name in ("sequential", "eventual", "user"):
        if sep:
            raise PolicyError(f"policy {name!r} takes no argument")
        return name, None
    if name == "bounded_delay":
        try:
            tau = int(arg)
        except ValueError:
            raise PolicyError("bounded_delay needs an integer tau: bounded_delay:TAU, e.g. "
                              "bounded_delay:4") from None
        if tau < 0:
            raise PolicyError(f"tau = {tau} must be >= 0 (0 is sequential)")
        return name, tau
    raise PolicyError(f"unknown policy {text!r}: use sequential, eventual, "
                      "bounded_delay:TAU or user")


def make_policy(policy: str, dag: Sequence[Sequence[int]] = (), function: str = "",
                args: dict[str, Any] | None = None) -> Policy:
    """The policy a ``[consistency]`` section describes."""
    name, tau = parse_policy_name(policy)
    if name == "sequential":
        return BoundedDelay(0)
    if name == "eventual":
        return BoundedDelay(None)
    if name == "bounded_delay":
        return BoundedDelay(tau)
    if bool(dag) == bool(function):
        raise PolicyError("policy 'user' needs exactly one of dag (a list of [before, "
                          "after] edges) or function ('package.module:function')")
    if dag:
        table = dag_deps(dag)
        return UserPolicy(lambda t: table.get(t, ()), name="user:dag")
    fn = load_callable(function)
    kwargs = dict(args or {})
    return UserPolicy(lambda t: fn(t, **kwargs), name=f"user:{function}")


# ---- examples of user policies (usable as [consistency] function) ----------------
def strict_then_bounded(t: int, strict: int = 10, tau: int = 4) -> range:
    """Sequential for the first ``strict`` tasks, then bounded delay ``tau``:
    ``function = "mpips.consistency.policy:strict_then_bounded"``,
    ``args = {strict = 20, tau = 8}``."""
    return range(t) if t < strict else range(max(0, t - tau))
