"""Durable operations inside a task: the journal, replay and suspension.

Every durable call (``step.run``, ``wait.*``, child triggers) gets a key — its name plus
an occurrence count (``charge``, ``charge#2``) — and is looked up in the run's journal,
loaded once per attempt. A recorded outcome is returned at once; otherwise the work is
done and its outcome committed before the call returns (nothing is acknowledged to task
code before its commit). Keys, not positions, match calls to records, so parallel
branches replay whatever order they finished in.

A wait that is not yet satisfied blocks its branch. When every branch of the run is
blocked on waits and no step or commit is in flight, the attempt is unwound (the task's
asyncio task is cancelled) and the run is suspended: WAITING, holding no worker, no queue
slot and no memory. Any completed waitpoint re-queues it, and the replay runs as far as
it now can.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import _outcome, _serde
from ._errors import NonDeterminismError, OutlastError, TokenTimedOut
from ._ids import derived_id
from ._signals import LeaseLost
from ._threads import RunThread, run_in_thread
from ._trigger import TriggerOptions, task_run
from .runs import JournalEntry, Run, RunHandle, RunStatus, TaskRunResult
from .store.base import Claim, LogLine, NewRun, Op, SetMetadata, StartWait, StepDone, Store

if TYPE_CHECKING:
    from .tasks import Task

T = TypeVar("T")
log = logging.getLogger("outlast.task")

_NEW_WORK_BACKSTOP = 10.0  # seconds new work waits for other branches, at most (C8)


def _loop_can_run(me: asyncio.Task[Any] | None) -> bool:
    """Whether a task on the loop other than ``me`` can run now, without anything from
    outside the loop: one not started yet, one yielding a turn (``asyncio.sleep(0)``), one
    whose awaited future is done. What a task awaits is asyncio's ``_fut_waiter`` (the C
    and the Python ``Task`` have it; uvloop runs asyncio's); a task without one counts as
    waiting, which only makes the C8 check below decide sooner."""
    for t in asyncio.all_tasks():
        if t is me or not hasattr(t, "_fut_waiter"):
            continue
        waiter = t._fut_waiter
        if waiter is None or waiter.done():
            return True
    return False


class Committer(Protocol):
    async def submit(self, op: Op) -> bool: ...

    def submit_nowait(self, op: Op) -> None: ...


@dataclass(frozen=True)
class RunInfo:
    """What a task can know about the run executing it: ``outlast.current_run()``."""

    id: str
    task_id: str
    attempt: int
    max_attempts: int
    tags: list[str]
    env: str
    queue: str
    parent_id: str | None
    root_id: str | None
    depth: int
    idempotency_key: str | None
    created_at: float
    concurrency_key: str | None
    _ctx: RunContext

    @property
    def cancel_requested(self) -> bool:
        """True once the run is cancelled: sync tasks should check it and return."""
        return self._ctx.cancel_requested

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._ctx.metadata)


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "outlast_run", default=None
)
_step_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "outlast_step", default=None
)


def in_run() -> bool:
    return _current.get() is not None


def _require(what: str) -> RunContext:
    ctx = _current.get()
    if ctx is None:
        raise OutlastError(f"{what} can only be used inside a running task")
    return ctx


def current_run() -> RunInfo:
    """The run executing the current task code."""
    ctx = _require("current_run()")
    r = ctx.run
    return RunInfo(
        id=r.id,
        task_id=r.task_id,
        attempt=r.attempt,
        max_attempts=r.max_attempts,
        tags=list(r.tags),
        env=r.env,
        queue=r.queue,
        parent_id=r.parent_id,
        root_id=r.root_id,
        depth=r.depth,
        idempotency_key=r.idempotency_key,
        created_at=r.created_at,
        concurrency_key=r.concurrency_key,
        _ctx=ctx,
    )


def fingerprint(*parts: Any) -> str | None:
    """A short digest of a durable call's arguments; None when they are not JSON-able."""
    try:
        text = _serde.to_json(list(parts))
    except OutlastError:
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunContext:
    """One execution segment of one run on one worker."""

    def __init__(
        self,
        claim: Claim,
        committer: Committer,
        store: Store,
        *,
        inplace_sleep_seconds: float = 1.0,
    ) -> None:
        self.run: Run = claim.run
        self.epoch = claim.epoch
        self.journal: dict[str, JournalEntry] = dict(claim.journal)
        self.waitpoints = dict(claim.waitpoints)
        self.committer = committer
        self.store = store
        self.inplace_sleep_seconds = inplace_sleep_seconds
        self.metadata: dict[str, Any] = dict(claim.run.metadata)
        self.counts: dict[str, int] = {}
        self.visited: set[str] = set()
        self.blocked: dict[str, str] = {}  # journal key -> waitpoint id
        self.busy = 0  # durable calls in progress (steps running, commits in flight)
        # The asyncio task running the run's code, set only while that code runs: what
        # end() cancels to unwind it.
        self.main_task: asyncio.Task[Any] | None = None
        self.end_reason: str | None = None  # suspend | cancel | timeout | handback | lost
        self.deadline: float | None = None  # monotonic time max_duration ends, if any
        # The run's sync code running in threads (the task's, its sync steps'), and the
        # asyncio tasks its sync code started on the loop (durable calls from a thread):
        # what the worker stops, and counts busy, when the attempt ends before they do.
        self.threads: set[RunThread] = set()
        self.side_tasks: set[asyncio.Task[Any]] = set()
        # Read from sync steps' threads; a bool is enough (nothing waits on it), and a
        # threading.Event per run cost a fan-out's hand-over path microseconds.
        self.cancel_requested = False
        self.segment_started = time.monotonic()
        self._suspend_checks = 0
        self.loop = asyncio.get_running_loop()
        self.logs_recorded = claim.logs_recorded
        self.logs_emitted = 0

    # -- keys and the journal -------------------------------------------------------------
    def key_for(self, name: str) -> str:
        n = self.counts.get(name, 0) + 1
        self.counts[name] = n
        return name if n == 1 else f"{name}#{n}"

    def lookup(self, key: str, kind: str, fp: str | None) -> JournalEntry | None:
        entry = self.journal.get(key)
        if entry is None:
            return None
        self.visited.add(key)
        if entry.kind != kind:
            raise NonDeterminismError(
                f"journal key {key!r} recorded a {entry.kind}, but the code now asks for a "
                f"{kind} under that key: the task's code changed under a running run",
                key=key,
            )
        if fp is not None and entry.fingerprint is not None and fp != entry.fingerprint:
            raise NonDeterminismError(
                f"journal key {key!r} recorded a {kind} with other arguments than the code "
                "now passes: the task's code or inputs changed under a running run",
                key=key,
            )
        return entry

    async def before_new_work(self, key: str) -> None:
        """C8: new work must not start while recorded keys remain unreached."""
        if len(self.visited) >= len(self.journal):
            return
        # Parallel branches of the run may still be on their way to their recorded calls,
        # taking as many loop turns as their awaited calls take. So wait, a turn at a
        # time, for as long as anything on the loop can run; new work with recorded keys
        # unreached once nothing can (every task waits on something outside the loop:
        # a thread, I/O, a timer) is a code change. Nothing can run over two turns in a
        # row: a plain future's callbacks (gather's) wake the task awaiting it a turn late.
        # The backstop is for a task elsewhere yielding forever (a busy poll).
        me = asyncio.current_task()
        idle = 0
        backstop = time.monotonic() + _NEW_WORK_BACKSTOP
        while idle < 2 and time.monotonic() < backstop:
            await asyncio.sleep(0)
            if len(self.visited) >= len(self.journal):
                return
            idle = 0 if _loop_can_run(me) else idle + 1
        missing = sorted(set(self.journal) - self.visited)
        raise NonDeterminismError(
            f"the code asked for new work {key!r} before reaching recorded "
            f"{', '.join(repr(k) for k in missing)}: the task's code changed under a running run",
            key=key,
            recorded=missing,
        )

    @property
    def replaying(self) -> bool:
        """True while recorded journal entries remain ahead of the code."""
        return len(self.visited) < len(self.journal)

    # -- commits --------------------------------------------------------------------------
    async def commit(self, op: Op) -> None:
        self.busy += 1
        try:
            ok = await self.committer.submit(op)
        finally:
            self.busy -= 1
        if not ok:
            self.end_reason = "lost"
            raise LeaseLost(f"run {self.run.id} is no longer held by this worker")

    def op_base(self) -> dict[str, Any]:
        return {"run_id": self.run.id, "epoch": self.epoch}

    # -- suspension -----------------------------------------------------------------------
    async def block(self, key: str, waitpoint_id: str) -> Any:
        """Park this branch until the run suspends (this attempt never resumes it)."""
        self.blocked[key] = waitpoint_id
        self.busy -= 1
        self.maybe_suspend()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.busy += 1

    def maybe_suspend(self) -> None:
        if self.blocked and self.busy <= 0 and self.end_reason is None:
            self._suspend_checks = 0
            asyncio.get_running_loop().call_soon(self._suspend_check)

    def _suspend_check(self) -> None:
        # Hold off a few loop turns: a sibling branch scheduled in the same turn may be
        # about to start a step, and suspending under it would only cost a replay.
        if not self.blocked or self.busy > 0 or self.end_reason is not None:
            return
        self._suspend_checks += 1
        if self._suspend_checks < 3:
            asyncio.get_running_loop().call_soon(self._suspend_check)
            return
        self.end(reason="suspend")

    def end(self, reason: str) -> None:
        """Unwind the attempt for ``reason`` (suspend, cancel, timeout, handback, lost)."""
        if self.end_reason is None:
            self.end_reason = reason
        if reason == "cancel":
            self.cancel_requested = True
        if self.main_task is not None and not self.main_task.done():
            self.main_task.cancel()

    def exec_seconds(self) -> float:
        return self.run.exec_seconds + (time.monotonic() - self.segment_started)


# -- step -----------------------------------------------------------------------------------


class _Step:
    async def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` once for this run: memoized under ``name`` (plus occurrence).

        ``fn`` may be sync (run in a thread) or async. The value returned on a replay is
        rebuilt with ``fn``'s return annotation (dataclass, pydantic model, JSON)."""
        ctx = _require("step.run()")
        ctx.busy += 1
        try:
            key = ctx.key_for(name)
            rtype = _serde.return_type(fn)
            entry = ctx.lookup(key, "step", fingerprint(args, kwargs))
            if entry is not None:
                return _serde.from_json(entry.output, rtype)
            await ctx.before_new_work(key)
            started = ctx.store.now()
            token = _step_key.set(f"{ctx.run.id}:{key}")
            try:
                if inspect.iscoroutinefunction(fn):
                    result = await fn(*args, **kwargs)
                else:
                    result = await run_in_thread(
                        ctx.threads, f"outlast-{ctx.run.id}-{key}", fn, *args, **kwargs
                    )
            except BaseException as exc:
                if not _platform_unwinding(ctx, exc):
                    name = _outcome.type_name(exc)
                    ctx.committer.submit_nowait(
                        LogLine(
                            **ctx.op_base(),
                            ts=ctx.store.now(),
                            attempt=ctx.run.attempt,
                            level="error",
                            kind="step_failed",
                            message=f"step {key!r} failed: {name}: {_outcome.message(exc)}",
                            data=_serde.dumps({"step": key, "error": name}),
                        )
                    )
                raise
            finally:
                _step_key.reset(token)
            output = _serde.to_json(result, rtype)
            await ctx.commit(
                StepDone(
                    **ctx.op_base(),
                    key=key,
                    kind="step",
                    fingerprint=fingerprint(args, kwargs),
                    output=output,
                    attempt=ctx.run.attempt,
                    started_at=started,
                    finished_at=ctx.store.now(),
                )
            )
            return result
        finally:
            ctx.busy -= 1
            ctx.maybe_suspend()

    def run_sync(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``step.run`` for sync tasks (which run in a worker thread)."""
        result: T = _from_thread(self.run(name, fn, *args, **kwargs))
        return result

    def idempotency_key(self) -> str:
        """Inside a step: ``<run id>:<step key>``, stable across retries and replays.

        Pass it to outside services (Stripe's Idempotency-Key, an email API) so the
        effect happens once even if the step body runs again after a crash (C3)."""
        key = _step_key.get()
        if key is None:
            raise OutlastError("step.idempotency_key() is only available inside a step")
        return key


def _platform_unwinding(ctx: RunContext, exc: BaseException) -> bool:
    """True when ``exc`` is the platform unwinding the attempt (a suspend, a cancel, a
    timeout...), not the code failing: the run's end is set, or this asyncio task was
    cancelled by someone (a ``CancelledError`` the code raised itself counts no cancel)."""
    if ctx.end_reason is not None or isinstance(exc, LeaseLost):
        return True
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0


class _Carried(Exception):
    """Carries what a durable call raised across the asyncio task it ran in, to the sync
    thread that made it: a task ending in KeyboardInterrupt or SystemExit re-raises it out
    of the event loop (stopping the worker), and one ending in CancelledError reads as a
    cancelled task, not as the code's failure."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(_outcome.type_name(exc))
        self.exc = exc


async def _carrying(coro: Awaitable[T]) -> T:
    try:
        return await coro
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError) as exc:
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise  # cancelled by the platform: its attempt ended
        raise _Carried(exc) from None


def _from_thread(coro: Awaitable[T]) -> T:
    """Run a durable call on the run's event loop from the sync task's thread."""
    ctx = _require("a durable call")
    context = contextvars.copy_context()  # carries the run context into the loop's task
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def finish(f: asyncio.Task[T]) -> None:
        ctx.side_tasks.discard(f)
        if f.cancelled():
            result.cancel()
        elif (exc := f.exception()) is not None:
            result.set_exception(exc.exc if isinstance(exc, _Carried) else exc)
        else:
            result.set_result(f.result())

    def start() -> None:
        call = ctx.loop.create_task(_carrying(coro), context=context)
        ctx.side_tasks.add(call)
        call.add_done_callback(finish)

    ctx.loop.call_soon_threadsafe(start)
    return result.result()


# -- waits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A waitpoint token: complete it by id, or by POSTing to ``callback_url``."""

    id: str
    callback_url: str
    timeout_at: float | None = None


@dataclass(frozen=True)
class WaitResult:
    ok: bool
    output: Any = None
    timed_out: bool = False
    error: str | None = None

    def unwrap(self) -> Any:
        if self.timed_out:
            raise TokenTimedOut("the waitpoint token timed out")
        if not self.ok:
            raise OutlastError(self.error or "the waitpoint completed with an error")
        return self.output


def _seconds(value: timedelta | float | int) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _Wait:
    async def sleep(self, duration: timedelta | float | int) -> None:
        """Sleep durably: the run is parked (no worker held) and resumes when due."""
        seconds = max(0.0, _seconds(duration))
        ctx = _current.get()
        if ctx is None:
            await asyncio.sleep(seconds)
            return
        ctx.busy += 1
        try:
            key = ctx.key_for("sleep")
            await self._sleep_until(ctx, key, ctx.store.now() + seconds, seconds, repr(seconds))
        finally:
            ctx.busy -= 1
            ctx.maybe_suspend()

    async def until(self, when: datetime) -> None:
        """Sleep durably until ``when`` (a timezone-aware datetime)."""
        if when.tzinfo is None:
            raise OutlastError("wait.until() needs a timezone-aware datetime")
        ctx = _current.get()
        target = when.timestamp()
        if ctx is None:
            await asyncio.sleep(max(0.0, target - time.time()))
            return
        ctx.busy += 1
        try:
            key = ctx.key_for("until")
            seconds = target - ctx.store.now()
            await self._sleep_until(ctx, key, target, seconds, when.isoformat())
        finally:
            ctx.busy -= 1
            ctx.maybe_suspend()

    async def _sleep_until(
        self, ctx: RunContext, key: str, target: float, seconds: float, fp: str
    ) -> None:
        entry = ctx.lookup(key, "sleep", fp)
        if entry is not None:
            if entry.status == "done":
                return
            state = ctx.waitpoints.get(entry.waitpoint_id or "")
            if state is not None and state.status != "pending":
                return
            await ctx.block(key, entry.waitpoint_id or "")
            return
        await ctx.before_new_work(key)
        started = ctx.store.now()
        if seconds <= ctx.inplace_sleep_seconds:
            # Short sleeps are served in place: parking would cost more than it saves.
            await asyncio.sleep(max(0.0, seconds))
            await ctx.commit(
                StepDone(
                    **ctx.op_base(),
                    key=key,
                    kind="sleep",
                    fingerprint=fp,
                    output=None,
                    attempt=ctx.run.attempt,
                    started_at=started,
                    finished_at=ctx.store.now(),
                )
            )
            return
        waitpoint_id = derived_id("waitpoint", ctx.run.id, key)
        await ctx.commit(
            StartWait(
                **ctx.op_base(),
                key=key,
                kind="sleep",
                fingerprint=fp,
                attempt=ctx.run.attempt,
                started_at=started,
                waitpoint_id=waitpoint_id,
                new_waitpoint_kind="sleep",
                timeout_at=target,
            )
        )
        await ctx.block(key, waitpoint_id)

    async def create_token(
        self,
        timeout: timedelta | float | None = None,
        *,
        idempotency_key: str | None = None,
        idempotency_key_ttl: timedelta | float | None = None,
        tags: Sequence[str] = (),
    ) -> Token:
        """A token that a callback, a human or app code completes; wait on it with
        ``wait.for_token``. Inside a task it is journaled (a replay gets the same token)."""
        ctx = _current.get()
        if ctx is None:
            from .client import default_async_client

            return await default_async_client().create_token(
                timeout=timeout,
                idempotency_key=idempotency_key,
                idempotency_key_ttl=idempotency_key_ttl,
                tags=tags,
            )
        ctx.busy += 1
        try:
            key = ctx.key_for("create_token")
            entry = ctx.lookup(key, "create_token", None)
            if entry is not None:
                data = _serde.loads(entry.output)
                return Token(**data)
            await ctx.before_new_work(key)
            started = ctx.store.now()
            timeout_at = started + _seconds(timeout) if timeout is not None else None
            token_id = derived_id("waitpoint", ctx.run.id, key)
            ttl = _seconds(idempotency_key_ttl) if idempotency_key_ttl is not None else None
            wp = await asyncio.to_thread(
                ctx.store.create_token,
                ctx.run.env,
                token_id,
                timeout_at=timeout_at,
                idempotency_key=idempotency_key,
                idempotency_ttl=ttl,
                tags=tags,
                run_id=ctx.run.id,
            )
            from .waitpoints import callback_url

            token = Token(
                id=wp.id,
                callback_url=await asyncio.to_thread(callback_url, ctx.store, wp.id),
                timeout_at=wp.timeout_at,
            )
            await ctx.commit(
                StepDone(
                    **ctx.op_base(),
                    key=key,
                    kind="create_token",
                    fingerprint=None,
                    output=_serde.dumps(token.__dict__),
                    attempt=ctx.run.attempt,
                    started_at=started,
                    finished_at=ctx.store.now(),
                )
            )
            return token
        finally:
            ctx.busy -= 1
            ctx.maybe_suspend()

    async def for_token(self, token: Token | str) -> WaitResult:
        """Wait until the token is completed (or times out); the run is parked meanwhile."""
        ctx = _require("wait.for_token()")
        token_id = token.id if isinstance(token, Token) else token
        ctx.busy += 1
        try:
            key = ctx.key_for("for_token")
            entry = ctx.lookup(key, "token", token_id)
            if entry is None:
                await ctx.before_new_work(key)
                # Look before journaling: a wait recorded on a token that does not exist
                # would park every later attempt on a waitpoint that can never complete.
                wp = await asyncio.to_thread(ctx.store.get_waitpoint, ctx.run.env, token_id)
                if wp is None:
                    from ._errors import TokenNotFound

                    raise TokenNotFound(f"no waitpoint token {token_id!r}", field="token")
                await ctx.commit(
                    StartWait(
                        **ctx.op_base(),
                        key=key,
                        kind="token",
                        fingerprint=token_id,
                        attempt=ctx.run.attempt,
                        started_at=ctx.store.now(),
                        waitpoint_id=token_id,
                    )
                )
                if wp.status != "pending":
                    return _wait_result(wp.status, wp.output, wp.is_error)
            else:
                state = ctx.waitpoints.get(token_id)
                if state is not None and state.status != "pending":
                    return _wait_result(state.status, _serde.loads(state.output), state.is_error)
            await ctx.block(key, token_id)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            ctx.busy -= 1
            ctx.maybe_suspend()


def _wait_result(status: str, output: Any, is_error: bool) -> WaitResult:
    if status == "timed_out":
        return WaitResult(ok=False, timed_out=True, error="timed out")
    if is_error:
        return WaitResult(ok=False, output=output, error=str(output))
    return WaitResult(ok=True, output=output)


# -- child runs -----------------------------------------------------------------------------


def _child_runs(
    ctx: RunContext,
    task: Task[Any, Any],
    payloads: Sequence[Any],
    options: TriggerOptions,
    waitpoint_id: str | None,
) -> list[NewRun]:
    runs = []
    for p in payloads:
        r = task_run(task, p, options, ctx.run.env)
        r.parent_id = ctx.run.id
        r.root_id = ctx.run.root_id or ctx.run.id
        r.depth = ctx.run.depth + 1
        r.parent_waitpoint_id = waitpoint_id
        if waitpoint_id is not None and r.version is None:
            r.version = ctx.run.version  # a child waited on runs on its parent's code (C11)
        runs.append(r)
    return runs


async def trigger_children(
    task: Task[Any, T], payloads: Sequence[Any], options: TriggerOptions, *, wait: bool
) -> list[RunHandle[T]]:
    """``task.trigger`` inside a run: journaled, so a replay returns the same runs."""
    ctx = _require("trigger")
    ctx.busy += 1
    try:
        key = ctx.key_for(f"trigger:{task.id}")
        fp = fingerprint(task.id, payloads)
        entry = ctx.lookup(key, "trigger", fp)
        if entry is None:
            await ctx.before_new_work(key)
            op = StartWait(
                **ctx.op_base(),
                key=key,
                kind="trigger",
                fingerprint=fp,
                attempt=ctx.run.attempt,
                started_at=ctx.store.now(),
                children=_child_runs(ctx, task, payloads, options, None),
            )
            await ctx.commit(op)
            ids = op.result_ids
        else:
            ids = _serde.loads(entry.output) or []
        return [RunHandle(id=i, task_id=task.id, _output_type=task.return_type) for i in ids]
    finally:
        ctx.busy -= 1
        ctx.maybe_suspend()


async def wait_for_children(
    task: Task[Any, T], payloads: Sequence[Any], options: TriggerOptions, *, batch: bool
) -> list[TaskRunResult[T]]:
    ctx = _require("trigger_and_wait()")
    ctx.busy += 1
    try:
        name = f"{'batch_' if batch else ''}trigger_and_wait:{task.id}"
        key = ctx.key_for(name)
        fp = fingerprint(task.id, payloads)
        entry = ctx.lookup(key, "children", fp)
        if entry is None:
            await ctx.before_new_work(key)
            waitpoint_id = derived_id("waitpoint", ctx.run.id, key)
            op = StartWait(
                **ctx.op_base(),
                key=key,
                kind="children",
                fingerprint=fp,
                attempt=ctx.run.attempt,
                started_at=ctx.store.now(),
                waitpoint_id=waitpoint_id,
                new_waitpoint_kind="children",
                children=_child_runs(ctx, task, payloads, options, waitpoint_id),
            )
            await ctx.commit(op)
        else:
            waitpoint_id = entry.waitpoint_id or ""
            state = ctx.waitpoints.get(waitpoint_id)
            if state is not None and state.status != "pending":
                ids = _serde.loads(entry.output) or []
                runs = await asyncio.to_thread(ctx.store.get_runs, ctx.run.env, ids)
                return [_child_result(r, task.return_type) for r in runs]
        await ctx.block(key, waitpoint_id)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        ctx.busy -= 1
        ctx.maybe_suspend()


def _child_result(run: Run, return_type: Any) -> TaskRunResult[Any]:
    ok = run.status == RunStatus.COMPLETED
    output = _serde.from_json(_serde.dumps(run.output), return_type) if ok else None
    return TaskRunResult(
        ok=ok, id=run.id, task_id=run.task_id, status=run.status, output=output, error=run.error
    )


# -- logs and metadata ----------------------------------------------------------------------


class _Logger:
    """``logger.info("page exported", page=3)``: stored with the run, in order with its
    steps, and passed to Python logging (logger ``outlast.task``)."""

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        ctx = _current.get()
        extra: dict[str, Any] = {"outlast_fields": fields}
        if ctx is not None:
            ctx.logs_emitted += 1
            if ctx.logs_emitted <= ctx.logs_recorded:
                return  # said already, by the segment that first ran this code
        if ctx is not None:
            extra.update(run_id=ctx.run.id, task_id=ctx.run.task_id, attempt=ctx.run.attempt)
            ctx.committer.submit_nowait(
                LogLine(
                    **ctx.op_base(),
                    ts=ctx.store.now(),
                    attempt=ctx.run.attempt,
                    level=level,
                    message=str(message),
                    data=_serde.to_json(fields) if fields else None,
                )
            )
        log.log(logging.getLevelName(level.upper()), message, extra=extra)

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)


class _Metadata:
    """Run metadata: persisted as it changes, readable from outside while the run runs."""

    def _ctx(self) -> RunContext:
        return _require("metadata")

    def _save(self, ctx: RunContext) -> None:
        ctx.committer.submit_nowait(
            SetMetadata(**ctx.op_base(), metadata=_serde.to_json(ctx.metadata))
        )

    def set(self, key: str, value: Any) -> None:
        ctx = self._ctx()
        _serde.to_json(value)  # fail here, in the caller, if it cannot be stored
        ctx.metadata[key] = value
        self._save(ctx)

    def get(self, key: str, default: Any = None) -> Any:
        return self._ctx().metadata.get(key, default)

    def increment(self, key: str, by: float = 1) -> float:
        ctx = self._ctx()
        value = ctx.metadata.get(key, 0) + by
        ctx.metadata[key] = value
        self._save(ctx)
        return float(value)

    def delete(self, key: str) -> None:
        ctx = self._ctx()
        if ctx.metadata.pop(key, None) is not None:
            self._save(ctx)

    def current(self) -> dict[str, Any]:
        return dict(self._ctx().metadata)


step = _Step()
wait = _Wait()
logger = _Logger()
metadata = _Metadata()
