"""Consistency: policies as task dependencies, enforced by the scheduler
across all workers. (Servers sum one task's pushes in :mod:`mpips.kv.aggregate`,
for ``KVWorker(po, table, aggregate=True)``.)

Job file section ``[consistency]``::

    policy = "bounded_delay:4"   # sequential | eventual | bounded_delay:TAU | user
    dag = [[0, 2], [1, 2]]       # user: explicit edges [before, after]
    function = ""                # user: "package.module:function", deps(t, **args)
    args = {}                    # keyword arguments of function

See :mod:`mpips.consistency.policy` (what each policy waits for),
:mod:`mpips.consistency.clock` (the scheduler's task clock and the iteration
queue).
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, Option, section
from .clock import IterationQueue, IterationTask, TaskClock
from .policy import (
    BoundedDelay,
    Policy,
    PolicyError,
    UserPolicy,
    dag_deps,
    load_callable,
    make_policy,
    parse_policy_name,
)

__all__ = ["BoundedDelay", "IterationQueue", "IterationTask", "Policy", "PolicyError",
           "TaskClock", "UserPolicy", "make_policy", "policy_of"]


def _check(fn):
    def check(value: Any) -> str | None:
        try:
            fn(value)
        except PolicyError as e:
            return str(e)
        return None
    return check


section("consistency", {
    "policy": Option(str, "eventual", "which earlier tasks a task waits for: sequential "
                     "(all: BSP), eventual (none: ASP), bounded_delay:TAU (those older than "
                     "t - TAU), user (dag or function)", _check(parse_policy_name)),
    "dag": Option(list, [], "policy 'user': edges [before, after] between task timestamps "
                  "(tasks not named have no dependencies)", _check(dag_deps)),
    "function": Option(str, "", "policy 'user': 'package.module:function'; function(t, "
                       "**args) returns the earlier tasks t depends on",
                       _check(lambda v: v and load_callable(v))),
    "args": Option(dict, {}, "keyword arguments for function"),
    "log_tasks": Option(bool, True, "write tasks.jsonl (start/finish/staleness/wait of "
                        "every task) in [job] output"),
})


def policy_of(cfg: Any) -> Policy:
    """The job's policy; a contradiction between keys raises ConfigError
    naming the section and file."""
    c = cfg.consistency
    try:
        return make_policy(c.policy, c.dag, c.function, c.args)
    except PolicyError as e:
        raise ConfigError(f"{cfg.source}: [consistency] policy = {c.policy!r}: {e}") from None
