"""The worker's execution of one run's attempt: from its claim to the op that ends it.

``_launch`` starts a claimed run in an asyncio task of its own; the task's code runs in
that task (async) or in a thread (sync, see ``_threads``). Whatever ends the attempt
(the code returning or raising, a suspend, a cancel, a timeout, a hand-back, a lost lease)
becomes one ``EndSegment`` for the committer; the run's slot goes to the next run while
that end commits, and the end hooks run once it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

from . import _observe, _outcome, _serde
from ._committer import _error_json
from ._config import settings
from ._errors import (
    AbortRun,
    NonDeterminismError,
    OutlastError,
    SerializationError,
    TaskTimeout,
    UnknownTask,
    ValidationError,
)
from ._signals import LeaseLost
from ._threads import RunThread, run_in_thread
from ._watchdog import LoopTimeout
from ._worker_base import WorkerBase
from .durable import RunContext, _current
from .store.base import Claim, EndSegment
from .tasks import Task

log = logging.getLogger("outlast.worker")

_NOT_RETRYABLE = (AbortRun, NonDeterminismError, SerializationError, ValidationError, UnknownTask)


class Attempts(WorkerBase):
    def _launch(self, claim: Claim) -> None:
        ctx = RunContext(
            claim,
            self.committer,
            self.store,
            inplace_sleep_seconds=settings().inplace_sleep_seconds,
        )
        self.active[claim.run.id] = ctx
        self._finishing.discard(claim.run.id)  # its last attempt's, if still committing
        self._watchdog.arm()
        # Keep a reference: the loop holds tasks only weakly.
        running = asyncio.create_task(self._execute(ctx), name=f"outlast-run-{claim.run.id}")
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        self.committer.started(running)

    async def _execute(self, ctx: RunContext) -> None:
        run = ctx.run
        task = self.tasks.get(run.task_id)
        began = time.monotonic()
        try:
            if task is None:
                err = UnknownTask(f"this worker has no task {run.task_id!r}")
                await self.committer.submit(self._failed(ctx, None, err))
                return
            await self._execute_task(ctx, task)
        except LoopTimeout:
            # The watchdog's interruption fired here, in the worker's code, as the run's
            # code let go of the loop (see _watchdog): the timeout it set is still its end.
            if run.id not in self._finishing and ctx.end_reason is not None:
                op = self._unwound(ctx)
                if op is not None:
                    self._finishing.add(run.id)
                    self.committer.submit_nowait(op)
        except Exception:
            log.exception("run %s: executor error", run.id, extra={"run_id": run.id})
        finally:
            took = time.monotonic() - began
            avg = self._avg_seconds
            self._avg_seconds = took if avg is None else 0.8 * avg + 0.2 * took
            # A run retried at once may be claimed and started again while this attempt's
            # end hooks still run: the entries are the new attempt's then.
            if self.active.get(run.id) is ctx:
                del self.active[run.id]
                self._finishing.discard(run.id)
            self.executed += 1
            self._start_ready()
            self._slot_signal()

    # over 60 lines: one attempt from its start to its commit, in order, with the two
    # observation points around it (tracing's attempt span opens and closes in this task).
    async def _execute_task(self, ctx: RunContext, task: Task[Any, Any]) -> None:
        run = ctx.run
        resumed = any(e.attempt == run.attempt for e in ctx.journal.values())
        # The task's code runs in this asyncio task, not in one of its own: a second task
        # per attempt was a creation, a context copy and a wake-up more on the loop for
        # every run, and a fan-out's slots pay each microsecond there about ten times
        # (bench/README.md#limits). ctx.end cancels this task only while ctx.main_task is
        # set, that is while the task's code runs, so the commit below is never cancelled.
        me = asyncio.current_task()
        assert me is not None
        token = _current.set(ctx)
        timer = None
        if run.max_duration is not None:
            remaining = max(0.0, run.max_duration - run.exec_seconds)
            ctx.deadline = time.monotonic() + remaining  # for the watchdog (_watchdog)
            timer = asyncio.get_running_loop().call_later(remaining, ctx.end, "timeout")
        op: EndSegment | None
        output: Any = None
        raised: BaseException | None = None
        if _observe.OBSERVERS:  # the attempt's span becomes current in this task
            await _observe.attempt_started(ctx, resumed)
        try:
            if ctx.end_reason is not None:  # ended (cancelled, handed back) before it began
                raise asyncio.CancelledError
            ctx.main_task = me
            output_text, output = await self._attempt(ctx, task, resumed)
            op = EndSegment(run_id=run.id, epoch=ctx.epoch, outcome="completed", output=output_text)
        except BaseException as exc:  # whatever the code raised, it ends the attempt here
            op = self._ended_by(ctx, task, exc)
            raised = exc
        finally:
            ctx.main_task = None
            _current.reset(token)
            if timer is not None:
                timer.cancel()
        if me.cancelling():
            # The attempt's unwinding ends here, and what it was unwound for is committed
            # below. A cancel the code asked for and never awaited would still be pending
            # and fire at the commit's await: take it now. And this task is not left
            # counted as cancelling, a count asyncio's structured helpers (timeout,
            # TaskGroup) read in the end hooks run here next.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            while me.uncancel():
                pass
        if ctx.end_reason is not None and op is not None and op.outcome == "completed":
            # The code caught the platform's unwinding and returned: the platform's reason
            # (a cancel, max_duration) still decides the outcome.
            op = self._unwound(ctx)
        if _observe.OBSERVERS:
            _observe.attempt_ended(ctx, op, raised)
        self._outlive(ctx)
        if op is None:
            log.warning("run %s: lease lost; nothing committed", run.id, extra={"run_id": run.id})
            return
        # The task's code is done: its slot goes to the next run while this end commits,
        # so quick runs keep the worker busy during the flush instead of idling for it.
        self._finishing.add(run.id)
        committing = self.committer.enqueue(op)
        self._hand_over(run)
        self._start_ready()
        self._slot_signal()
        committed = await committing
        if committed:
            await self._after(ctx, task, op, output)

    async def _attempt(
        self, ctx: RunContext, task: Task[Any, Any], resumed: bool
    ) -> tuple[str, Any]:
        payload = _serde.validate(ctx.run.payload, task.payload_type, what="payload")
        if task.hooks:
            await self._hook(task, "resume" if resumed else "start", ctx.run, payload)
        if task.is_async:
            result = await task.fn(payload)
        else:
            result = await run_in_thread(ctx.threads, f"outlast-{ctx.run.id}", task.fn, payload)
        return _serde.to_json(result, task.return_type), result

    def _ended_by(
        self, ctx: RunContext, task: Task[Any, Any], exc: BaseException
    ) -> EndSegment | None:
        """What ends an attempt whose code raised ``exc``. The platform's unwinding (a
        suspend, a cancel, a timeout, a hand-back, a lost lease) is told by the reason it
        set before unwinding, not by the exception's type: task code may raise a
        CancelledError of its own, or turn the platform's into anything on its way out.
        Everything else is the code failing, whatever it raised."""
        if ctx.end_reason is not None:
            return self._unwound(ctx)
        if isinstance(exc, LeaseLost):
            return None
        if isinstance(exc, LoopTimeout):
            # The watchdog's interruption, meant for another run, landed in this one's
            # code (see _watchdog): not this run's fault, so back to the queue unspent.
            ctx.end_reason = "handback"
            return self._unwound(ctx)
        return self._failed(ctx, task, exc)

    def _outlive(self, ctx: RunContext) -> None:
        """The attempt is over: stop what it left running. Durable calls its sync code
        started on the loop are cancelled; threads of its sync code still running are told
        to stop (``Stopped``, which pure-Python code sees at its next bytecode) and keep
        their slot until they return, however long that is (a C call, a system call)."""
        for call in list(ctx.side_tasks):
            call.cancel()
        if not ctx.threads:
            return
        log.warning(
            "run %s: %d thread(s) of its sync code still run after its attempt ended; "
            "stopping them; each keeps a slot until it returns",
            ctx.run.id,
            len(ctx.threads),
            extra={"run_id": ctx.run.id},
        )
        for rt in list(ctx.threads):
            rt.stop()
            self._overrun.add(rt)
            rt.on_exit(functools.partial(self._thread_returned, rt))

    def _thread_returned(self, rt: RunThread) -> None:
        self._overrun.discard(rt)
        self._start_ready()
        self._slot_signal()

    def _unwound(self, ctx: RunContext) -> EndSegment | None:
        run, reason = ctx.run, ctx.end_reason
        base: dict[str, Any] = {"run_id": run.id, "epoch": ctx.epoch}
        if reason == "suspend":
            waits = sorted(set(ctx.blocked.values()))
            return EndSegment(
                **base,
                outcome="suspend",
                wait_on=waits,
                exec_seconds=ctx.exec_seconds(),
                wait_reason=_serde.dumps({"waitpoints": waits, "keys": sorted(ctx.blocked)}),
            )
        if reason == "cancel":
            return EndSegment(
                **base, outcome="canceled", error=_error_json("canceled", "the run was canceled")
            )
        if reason == "timeout":
            return EndSegment(
                **base,
                outcome="timed_out",
                error=_error_json(
                    TaskTimeout.code,
                    f"the run exceeded its max_duration of {run.max_duration} s",
                ),
            )
        if reason == "handback":
            return EndSegment(**base, outcome="handback", exec_seconds=ctx.exec_seconds())
        return None  # lost: nothing may be committed

    def _failed(
        self, ctx: RunContext, task: Task[Any, Any] | None, exc: BaseException
    ) -> EndSegment:
        run = ctx.run
        code = exc.code if isinstance(exc, OutlastError) else "task_error"
        # Never raises, whatever exc is: an error that cannot be written would leave the
        # run EXECUTING with nothing committed.
        error = _serde.dumps(
            {
                "code": code,
                "type": _outcome.type_name(exc),
                "message": _outcome.task_message(exc),
                "traceback": _outcome.formatted_traceback(exc),
            }
        )
        base: dict[str, Any] = {"run_id": run.id, "epoch": ctx.epoch}
        retryable = task is not None and not isinstance(exc, _NOT_RETRYABLE)
        if task is not None and retryable and run.attempt < run.max_attempts:
            delay = task.retry.delay(run.attempt, self.rng)
            log.info(
                "run %s attempt %d failed (%s); retrying in %.1f s",
                run.id,
                run.attempt,
                _outcome.type_name(exc),
                delay,
                extra={"run_id": run.id},
            )
            retry_at = self.store.now() + delay
            return EndSegment(**base, outcome="retry", error=error, retry_at=retry_at)
        return EndSegment(**base, outcome="failed", error=error)
