"""The scheduler's task desk: the app's work queue under the consistency
policy's clock. Workers ask for tasks and report them done; a task is handed
out when the policy lets it start (its dependencies finished on every worker)."""

from __future__ import annotations

import json
import os
from collections import deque
from typing import TYPE_CHECKING

from .. import consistency
from ..transport import Message, Op

if TYPE_CHECKING:
    from .core import Scheduler


class TaskDesk:
    def __init__(self, sched: Scheduler):
        self.sched, self.po = sched, sched.po
        po = self.po
        self.queue = sched.app.work_queue()
        self.waiting: deque[int] = deque()  # workers that asked and got nothing yet
        if self.queue is not None:
            self.queue.bind(po.layout.workers)
        self.clock = None if self.queue is None else consistency.TaskClock(
            consistency.policy_of(po.cfg), po.layout.workers, everyone=self.queue.everyone)
        po.on(Op.TASK_REQ, self._request)

    def _request(self, msg: Message) -> None:
        if self.queue is None:
            raise RuntimeError(f"rank {msg.sender} asked for a task, but app "
                               f"{self.sched.app.name!r} has no work queue")
        body = msg.json()  # {"done": [tasks finished], "want": bool}
        for done in body["done"]:
            self.queue.done(msg.sender, self.queue.task_of(done))
            if "ts" in done:
                self.clock.finish(done["ts"], msg.sender)
        if body["want"]:
            self.waiting.append(msg.sender)
            self.clock.requested(msg.sender)
        self.hand_out()

    def hand_out(self) -> None:
        """Answer every waiting worker the policy and the queue let start."""
        if self.sched.checkpoints.pausing:
            self.sched.checkpoints.maybe_checkpoint()
            return
        # A done report may open the next epoch for workers already waiting.
        dead = self.po.van.dead
        if self.queue.everyone:  # each worker's next task is its own: ask for each
            self.waiting = deque(w for w in self.waiting if w not in dead and not self._serve(w))
            return
        # One next task for all: the first worker it cannot be given to
        # holds the rest, so a request costs O(1), not O(waiting workers).
        while self.waiting:
            w = self.waiting[0]
            if w not in dead and not self._serve(w):
                return
            self.waiting.popleft()

    def _serve(self, w: int) -> bool:
        """Send ``w`` its next task (or the end), if the policy and the queue
        let it start now."""
        ts = self.clock.candidate(self.queue, w)
        if ts is not None and not self.clock.ready(ts):
            return False  # the policy holds it: dependencies not finished
        task = self.queue.next(w)
        if task is None and not self.queue.finished:
            return False  # epoch barrier: answer once the epoch is done
        meta = b"" if task is None else Message.jmeta(
            self.queue.describe(task) | self.clock.start(ts, w))
        self.po.send(w, Message(op=Op.TASK, meta=meta))
        return True

    def worker_lost(self, rank: int, who: str) -> None:
        """A dead worker's unfinished tasks go back to the queue."""
        if self.queue is None:
            return
        again = self.queue.requeue(rank)
        self.clock.abandon(rank)
        if again:
            print(f"mpips: {len(again)} task(s) of {who} go back to the queue", flush=True)
        self.hand_out()

    def write_log(self) -> None:
        """consistency: tasks.jsonl and the summary in consistency.json."""
        if self.clock is None or not self.clock.records:
            return
        out = self.po.cfg.job.output
        if self.po.cfg.consistency.log_tasks:
            self.clock.write(out)
        summary = self.clock.summary()
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "consistency.json"), "w") as f:
            f.write(json.dumps(summary) + "\n")
        print(f"mpips: consistency {summary['policy']}: {summary['tasks']} task issues, "
              f"staleness max {summary['staleness_max']} mean "
              f"{summary['staleness_mean']:.2f}, held {summary['wait_total']:.2f} s in all, "
              "idle fraction " + " ".join(f"rank {w}: {f:.1%}" for w, f in
                                          summary["idle_fraction"].items()), flush=True)
