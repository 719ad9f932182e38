"""``OutlastEnv``: a store, a fake clock, a client and an in-process worker for one test.

``await env.run(task, payload)`` triggers a run and drives the worker until the run has
finished or parked (a sleep, a token, a delay), crossing retry backoffs by moving the
fake clock to the next attempt, as a time-skipping test server does. Child runs started
with ``trigger_and_wait`` run inline in the same drive, so a parent's test sees its
children's results without a second worker. ``await env.advance(timedelta(days=3))``
moves the clock and fires whatever became due. Nothing sleeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from .. import _steps
from .._clock import FakeClock
from ..client import Client, TriggerOptions, set_default_client
from ..durable import Token
from ..runs import Run, RunStatus
from ..store.base import Store, Waitpoint
from ..tasks import REGISTRY, Task
from ..worker import Worker
from ._run import TestRun, step_name

_UNSET: Any = object()

# Rounds of "drive, skip to the next retry" before a drive gives up: a task whose retries
# never end would otherwise hang the test rather than fail it.
MAX_ROUNDS = 1000


class OutlastEnv:
    """An isolated outlast for a test. Use as ``async with OutlastEnv(store, clock)``, or
    through the ``outlast_env`` pytest fixture, which does that for you."""

    def __init__(
        self,
        store: Store,
        clock: FakeClock,
        *,
        tasks: Iterable[Task[Any, Any]] | Mapping[str, Task[Any, Any]] | None = None,
        env: str = "test",
        concurrency: int = 10,
        skip_retry_backoff: bool = True,
    ) -> None:
        self.store = store
        self.clock = clock
        self.env = env
        self.client = Client(store=store, env=env)
        if tasks is None:
            served: Mapping[str, Task[Any, Any]] = REGISTRY
        elif isinstance(tasks, Mapping):
            served = dict(tasks)
        else:
            served = {t.id: t for t in tasks}
        self.tasks = served
        self.concurrency = concurrency
        self.skip_retry_backoff = skip_retry_backoff
        self._worker: Worker | None = None
        self._faults: dict[str, list[BaseException]] = {}
        # The order steps' bodies started in, per run: journal timestamps come from the
        # fake clock, which does not move between the steps of one segment.
        self.step_order: dict[str, list[str]] = {}
        self._previous_fault: Any = None

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> OutlastEnv:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Make this env's client the one ``task.trigger()`` uses, and route step faults
        (``fail_next``) through it."""
        set_default_client(self.client)
        self._previous_fault = _steps.step_fault
        _steps.step_fault = self._before_step

    async def close(self) -> None:
        if self._worker is not None:
            await self._worker.shutdown(grace=0)
            self._worker = None
        _steps.step_fault = self._previous_fault
        set_default_client(None)

    @property
    def worker(self) -> Worker:
        """The in-process worker (made on first use, inside the test's event loop)."""
        if self._worker is None:
            self._worker = Worker(
                self.store, tasks=self.tasks, env=self.env, concurrency=self.concurrency
            )
        return self._worker

    # -- triggering and driving -----------------------------------------------------------
    def trigger(self, task: Task[Any, Any] | str, payload: Any = None, **options: Any) -> TestRun:
        """Start a run without driving it (options as for ``Client.trigger``)."""
        opts = TriggerOptions(**options) if options else None
        handle = self.client.trigger(task, payload, options=opts)
        return TestRun(self, handle.id)

    async def run(self, task: Task[Any, Any] | str, payload: Any = None, **options: Any
                  ) -> TestRun:
        """Trigger a run and drive it until it finished or parked; its children run inline."""
        run = self.trigger(task, payload, **options)
        await self.drive(run.id)
        return run

    async def run_until_idle(self) -> int:
        """Let the worker execute everything ready now; returns the segments executed."""
        return await self.worker.run_until_idle()

    async def drive(self, run_id: str | None = None) -> None:
        """Execute until nothing is ready; a run retrying after a failure (QUEUED with a
        later start) gets the clock moved to its start when ``skip_retry_backoff``. With
        ``run_id``, only that run's tree is considered for the skip."""
        for _ in range(MAX_ROUNDS):
            await self.run_until_idle()
            if not self.skip_retry_backoff:
                return
            due = self._next_retry(run_id)
            if due is None:
                return
            self.clock.set(max(due, self.clock.now()))
        raise AssertionError(f"still retrying after {MAX_ROUNDS} rounds: a retry that never ends?")

    def _next_retry(self, run_id: str | None) -> float | None:
        if run_id is None:
            runs = self.store.list_runs(self.env, status=["QUEUED"], limit=1000)
        else:
            runs = self._tree(run_id)
        later = [r.available_at for r in runs
                 if r.status == RunStatus.QUEUED and r.attempt > 1
                 and r.available_at > self.clock.now()]
        return min(later) if later else None

    def _tree(self, run_id: str) -> list[Run]:
        out: list[Run] = []
        todo = [run_id]
        while todo:
            parent = todo.pop()
            run = self.store.get_run(self.env, parent)
            if run is not None:
                out.append(run)
            kids = self.store.list_runs(self.env, parent_id=parent, limit=1000)
            todo.extend(k.id for k in kids if not k.is_final)
        return out

    async def advance(self, by: timedelta | float) -> None:
        """Move the fake clock by ``by`` and drive: timers, delays and timeouts that fell
        due fire, and the runs they wake run until they finish or park again."""
        seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
        if seconds < 0:
            raise ValueError("advance: the clock only moves forward")
        self.clock.advance(seconds)
        await self.drive()

    async def complete_token(
        self, token: str | Token | TestRun, data: Any = None
    ) -> Waitpoint:
        """Complete a waitpoint token (a ``TestRun`` means the token it waits on) and drive
        the run it wakes."""
        token_id = token.token if isinstance(token, TestRun) else (
            token.id if isinstance(token, Token) else token)
        wp = self.client.complete_token(token_id, data)
        await self.drive()
        return wp

    def retrieve(self, run_id: str) -> Run:
        return self.client.retrieve(run_id)

    # -- fault injection ------------------------------------------------------------------
    def fail_next(
        self, step: str, exc: BaseException | type[BaseException] | None = None, *,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` executions of the step named ``step`` (any occurrence,
        any run) raise ``exc`` instead of running their body. The failure is recorded and
        retried exactly like one the body raised."""
        if times < 1:
            raise ValueError("times must be at least 1")
        for _ in range(times):
            error = exc() if isinstance(exc, type) else exc
            if error is None:
                error = RuntimeError(f"injected failure of step {step!r} (outlast.testing)")
            self._faults.setdefault(step, []).append(error)

    # -- stubs ----------------------------------------------------------------------------
    def stub(
        self,
        task: Task[Any, Any],
        result: Any = _UNSET,
        *,
        error: BaseException | None = None,
        fn: Callable[[Any], Any] | None = None,
    ) -> None:
        """Run ``task``'s runs with a stand-in body: one returning ``result``, raising
        ``error``, or ``fn(payload)``. Its runs are still real runs (triggered, journaled,
        retried per the task's policy), so a parent's ``trigger_and_wait`` on it gets the
        stand-in's result: test a parent without its children's side effects."""
        if sum(x is not None and x is not _UNSET for x in (result, error, fn)) != 1:
            raise ValueError("stub: give exactly one of result, error= or fn=")

        async def stand_in(payload: Any) -> Any:
            if fn is not None:
                out = fn(payload)
                return await out if hasattr(out, "__await__") else out
            if error is not None:
                raise error
            return result

        tasks = dict(self.tasks)
        tasks[task.id] = dataclasses.replace(task, fn=stand_in)
        self.tasks = tasks
        if self._worker is not None:
            self._worker.tasks = tasks

    def _before_step(self, run: Run, key: str) -> BaseException | None:
        order = self.step_order.setdefault(run.id, [])
        if key not in order:
            order.append(key)
        pending = self._faults.get(step_name(key)) or self._faults.get(key)
        return pending.pop(0) if pending else None
