"""One attempt's run context: its journal, keys, C8 checks, commits and suspension.

``RunContext`` is what the durable calls (``outlast/durable.py`` and the modules it
gathers: steps, waits, child runs, logs) share while one execution segment of a run
executes on a worker; ``DurableCall`` is the bracket every durable call goes through
(count it busy, give it its key, look it up in the journal, check new work for C8, and
build its journal record).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from . import _serde
from ._errors import NonDeterminismError, OutlastError
from ._quiet import until_quiet
from ._signals import LeaseLost
from ._threads import RunThread
from .runs import JournalEntry, Run
from .store.base import Claim, NewRun, Op, StartWait, StepDone, WorkerStore

# Seconds new work waits for the loop to go quiet, at most (C8): raising too soon would
# fail a run whose branch was still on its way to its recorded call.
_NEW_WORK_BACKSTOP = 10.0
# Seconds a run with every branch blocked waits for the loop to go quiet before it
# suspends, at most: suspending under a branch about to start a step only costs a replay.
_SUSPEND_BACKSTOP = 1.0


class CommitQueue(Protocol):
    """Where a run's operations go to be committed (the worker's group committer)."""

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
        committer: CommitQueue,
        store: WorkerStore,
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
        self._suspender: asyncio.Task[None] | None = None  # waiting to suspend the run
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
        # taking as many loop turns as their awaited calls take: wait until they reach
        # them, or until nothing on the loop can run (every task waits on something
        # outside it: a thread, I/O, a timer), when new work with recorded keys still
        # unreached is a code change (see _quiet).
        if await until_quiet(lambda: not self.replaying, _NEW_WORK_BACKSTOP):
            return
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

    def call(self, name: str, kind: str, fp: str | None) -> DurableCall:
        """The bracket of one durable call: ``async with ctx.call(...) as call``."""
        return DurableCall(self, name, kind, fp)

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
        if self._suspender is None and not self._moved_on():
            # (held here: the loop holds tasks only weakly)
            self._suspender = self.loop.create_task(self._suspend_when_quiet())

    def _moved_on(self) -> bool:
        return not self.blocked or self.busy > 0 or self.end_reason is not None

    async def _suspend_when_quiet(self) -> None:
        # Every branch is blocked, but a sibling scheduled meanwhile may be about to start
        # a step: suspending under it would only cost a replay. So suspend once the loop
        # is quiet (see _quiet), unless a branch got busy again first.
        try:
            await until_quiet(self._moved_on, _SUSPEND_BACKSTOP)
        finally:
            self._suspender = None
        if not self._moved_on():
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


class DurableCall:
    """One durable call's bracket, shared by all of them (step, sleep, until, tokens, child
    runs): while it is open the call counts busy (the run does not suspend under it); on
    entry it gets its key and its journal entry (``entry``, None for new work, which
    must first pass C8's check); on exit the run may suspend. ``step_done`` and
    ``start_wait`` build its journal record."""

    __slots__ = ("ctx", "entry", "fp", "key", "kind", "name")

    def __init__(self, ctx: RunContext, name: str, kind: str, fp: str | None) -> None:
        self.ctx = ctx
        self.name = name
        self.kind = kind
        self.fp = fp
        self.key = ""
        self.entry: JournalEntry | None = None

    async def __aenter__(self) -> DurableCall:
        ctx = self.ctx
        ctx.busy += 1
        try:
            self.key = ctx.key_for(self.name)
            self.entry = ctx.lookup(self.key, self.kind, self.fp)
            if self.entry is None:
                await ctx.before_new_work(self.key)
        except BaseException:
            ctx.busy -= 1
            ctx.maybe_suspend()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ctx.busy -= 1
        self.ctx.maybe_suspend()

    def _record(self, started: float) -> dict[str, Any]:
        ctx = self.ctx
        return {
            "run_id": ctx.run.id,
            "epoch": ctx.epoch,
            "key": self.key,
            "kind": self.kind,
            "fingerprint": self.fp,
            "attempt": ctx.run.attempt,
            "started_at": started,
        }

    def step_done(self, output: str | None, started: float) -> StepDone:
        """The record of a call that finished: its output, journaled under its key."""
        return StepDone(**self._record(started), output=output, finished_at=self.ctx.store.now())

    def start_wait(
        self,
        started: float,
        *,
        waitpoint_id: str | None = None,
        new_waitpoint_kind: str | None = None,
        timeout_at: float | None = None,
        children: list[NewRun] | None = None,
    ) -> StartWait:
        """The record of a call that waits (on a waitpoint, or for child runs to start)."""
        return StartWait(
            **self._record(started),
            waitpoint_id=waitpoint_id,
            new_waitpoint_kind=new_waitpoint_kind,
            timeout_at=timeout_at,
            children=children if children is not None else [],
        )
