"""Durable calls from sync task code: run on the run's event loop from the code's thread.

A sync task (and a sync step) runs in a thread of its own; ``step.run_sync``, the sync
waits and child triggers hand their coroutine to the run's loop and block the thread on
its result. What the call raised comes back to the thread as it was raised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Awaitable
from typing import TypeVar

from . import _outcome
from ._run_context import _require

T = TypeVar("T")


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


def from_thread(coro: Awaitable[T]) -> T:
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
