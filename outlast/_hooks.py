"""Lifecycle hooks: what a task's ``on_start`` … ``on_end`` hooks hear, and when.

A run's hooks run on the worker that executed the attempt, after its end committed
(``_after``); runs that ended outside any worker (cancelled while waiting, expired, lost
with their worker) get their end hooks from whichever worker takes them due
(``_run_due_hooks``). A hook never changes a run's outcome nor stops the worker.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

from . import _observe, _serde
from ._worker_base import WorkerBase
from .durable import RunContext
from .runs import Run, RunStatus
from .store.base import EndSegment
from .tasks import Task

log = logging.getLogger("outlast.worker")

_END_HOOKS = frozenset({"end", "complete", "failure"})


@dataclass(frozen=True)
class HookEvent:
    """What a lifecycle hook receives."""

    name: str  # start | success | failure | complete | wait | resume | end
    run_id: str
    task_id: str
    attempt: int
    payload: Any
    status: RunStatus | None = None
    output: Any = None
    error: dict[str, Any] | None = None


class Hooks(WorkerBase):
    _elsewhere_at = 0.0  # monotonic time of the last take of hook-less ended runs

    async def _after(
        self, ctx: RunContext, task: Task[Any, Any], op: EndSegment, output: Any
    ) -> None:
        if not task.hooks:
            return
        run = ctx.run
        error = _serde.loads(op.error) if op.error else None
        status = {
            "completed": RunStatus.COMPLETED,
            "failed": RunStatus.FAILED,
            "timed_out": RunStatus.TIMED_OUT,
            "canceled": RunStatus.CANCELED,
        }.get(op.outcome)
        if op.outcome == "suspend":
            await self._hook(task, "wait", run, run.payload)
            return
        if status is None:
            return
        if status == RunStatus.COMPLETED:
            await self._hook(task, "success", run, run.payload, status=status, output=output)
        elif status != RunStatus.CANCELED:
            # A cancellation is not a failure; the same rule as _run_due_hooks, so a run
            # cancelled while executing and one cancelled while waiting hear the same.
            await self._hook(task, "failure", run, run.payload, status=status, error=error)
        for name in ("complete", "end"):
            await self._hook(
                task, name, run, run.payload, status=status, output=output, error=error
            )

    async def _run_due_hooks(self) -> None:
        """End hooks of runs that ended outside any worker (cancelled while idle, expired,
        lost with their worker), and the observers' news of them."""
        with_hooks = [t.id for t in self.tasks.values() if _END_HOOKS & set(t.hooks)]
        if _observe.OBSERVERS:
            await self._observe_ended_elsewhere(with_hooks)
        if not with_hooks:
            return
        runs = await asyncio.to_thread(self.store.take_hooks_due, self.env, with_hooks)
        for run in runs:
            if _observe.OBSERVERS:
                await _observe.run_ended_elsewhere(self.store, run)
            task = self.tasks[run.task_id]
            if run.status in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.EXPIRED):
                await self._hook(
                    task, "failure", run, run.payload, status=run.status, error=run.error
                )
            for name in ("complete", "end"):
                await self._hook(task, name, run, run.payload, status=run.status, error=run.error)

    async def _observe_ended_elsewhere(self, with_hooks: list[str]) -> None:
        """Tell metrics and traces of runs without end hooks that ended outside a worker:
        otherwise a dashboard of outcomes misses every expiry and every cancel of a run
        not executing. Taken once in the fleet, so counted once; at most once a second,
        being for observers only."""
        if time.monotonic() - self._elsewhere_at < 1.0:
            return
        self._elsewhere_at = time.monotonic()
        hookless = [t for t in self.tasks if t not in with_hooks]
        runs = await asyncio.to_thread(
            self.store.take_ended_elsewhere, self.env, hookless, self.version
        )
        for run in runs:
            await _observe.run_ended_elsewhere(self.store, run)

    async def _hook(
        self,
        task: Task[Any, Any],
        name: str,
        run: Run,
        payload: Any,
        *,
        status: RunStatus | None = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        for hook in task.hooks.get(name, ()):
            event = HookEvent(
                name, run.id, run.task_id, run.attempt, payload, status, output, error
            )
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                me = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and me is not None and me.cancelling():
                    raise  # the worker's own cancel (a shutdown), not the hook's doing
                # A hook never changes the run's outcome, nor stops the worker, whatever it
                # raises (KeyboardInterrupt, SystemExit included).
                log.exception("run %s: %s hook failed", run.id, name, extra={"run_id": run.id})
