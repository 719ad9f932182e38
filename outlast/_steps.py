"""``step.run``: a memoized step, its stable idempotency key, and step failures' log lines."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from . import _observe, _outcome, _serde
from ._errors import OutlastError
from ._run_context import RunContext, _require, _step_key, fingerprint
from ._signals import LeaseLost
from ._sync_calls import from_thread
from ._threads import run_in_thread
from .runs import Run
from .store.base import LogLine

T = TypeVar("T")

# Where tests inject a step's failure (``outlast.testing``'s ``fail_next``): called with
# the run and the step's journal key before the step's body runs; an exception it returns
# is raised in place of the body, so it is logged and retried as the body's own would be.
step_fault: Callable[[Run, str], BaseException | None] | None = None


class _Step:
    async def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` once for this run: memoized under ``name`` (plus occurrence).

        ``fn`` may be sync (run in a thread) or async. The value returned on a replay is
        rebuilt with ``fn``'s return annotation (dataclass, pydantic model, JSON)."""
        ctx = _require("step.run()")
        rtype = _serde.return_type(fn)
        async with ctx.call(name, "step", fingerprint(args, kwargs)) as call:
            if call.entry is not None and _observe.OBSERVERS:
                _observe.step_cached(ctx, call.key, call.entry)
            if call.entry is not None:
                return _serde.from_json(call.entry.output, rtype)
            key = call.key
            started = ctx.store.now()
            token = _step_key.set(f"{ctx.run.id}:{key}")
            seen = _observe.step_started(ctx, key) if _observe.OBSERVERS else None
            try:
                fault = step_fault(ctx.run, key) if step_fault is not None else None
                if fault is not None:
                    raise fault
                if inspect.iscoroutinefunction(fn):
                    result = await fn(*args, **kwargs)
                else:
                    result = await run_in_thread(
                        ctx.threads, f"outlast-{ctx.run.id}-{key}", fn, *args, **kwargs
                    )
            except BaseException as exc:
                if seen is not None:
                    seen.end(exc)
                if not _platform_unwinding(ctx, exc):
                    _log_step_failed(ctx, key, exc)
                raise
            finally:
                _step_key.reset(token)
            if seen is not None:
                seen.end(None)
            await ctx.commit(call.step_done(_serde.to_json(result, rtype), started))
            return result

    def run_sync(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``step.run`` for sync tasks (which run in a worker thread)."""
        result: T = from_thread(self.run(name, fn, *args, **kwargs))
        return result

    def idempotency_key(self) -> str:
        """Inside a step: ``<run id>:<step key>``, stable across retries and replays.

        Pass it to outside services (Stripe's Idempotency-Key, an email API) so the
        effect happens once even if the step body runs again after a crash (C3)."""
        key = _step_key.get()
        if key is None:
            raise OutlastError("step.idempotency_key() is only available inside a step")
        return key


def _log_step_failed(ctx: RunContext, key: str, exc: BaseException) -> None:
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


def _platform_unwinding(ctx: RunContext, exc: BaseException) -> bool:
    """True when ``exc`` is the platform unwinding the attempt (a suspend, a cancel, a
    timeout...), not the code failing: the run's end is set, or this asyncio task was
    cancelled by someone (a ``CancelledError`` the code raised itself counts no cancel)."""
    if ctx.end_reason is not None or isinstance(exc, LeaseLost):
        return True
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0
