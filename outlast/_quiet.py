"""When the event loop has gone quiet: nothing on it can run without something from outside.

Two decisions about a run wait for this, never for a number of loop turns: whether new
work with recorded journal keys still unreached is a code change (C8, ``before_new_work``),
and when a run whose every branch is blocked on a wait suspends. A parallel branch on its
way to its recorded call takes as many turns as its awaited calls take; what it cannot do
is make progress once every task on the loop waits on something outside the loop (a
thread, I/O, a timer) — from then on, nothing that is not already on the loop can reach a
recorded key before an outside event, so the decision can be made.

Quiet is judged from the tasks themselves: a task can run when it awaits nothing (it is
new, or yielding with ``asyncio.sleep(0)``), when the future it awaits is done, or when it
awaits a ``gather`` whose children are all done. A task that finished, or a future that a
task resolved, wakes whoever awaits it through callbacks that run a turn later; so quiet
is two looks in a row, a turn apart, that find the same tasks and none that can run. The
tasks waiting for quiet themselves (``watching``) do not count: they only look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

# Tasks inside until_quiet: they yield every turn but only look, so none holds up another.
_watchers: set[asyncio.Task[Any]] = set()


def can_run(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` can run now, or once callbacks already due have run, without
    anything from outside the loop. What a task awaits is asyncio's ``_fut_waiter`` (the C
    and the Python ``Task`` have it; uvloop runs asyncio's); a task without one counts as
    waiting, which only makes a decision waiting on quiet come sooner."""
    if task.done() or not hasattr(task, "_fut_waiter"):
        return False
    waiter = task._fut_waiter
    if waiter is None or waiter.done():
        return True
    children = getattr(waiter, "_children", None)  # a gather: done once they all are
    return children is not None and all(c.done() for c in children)


def _look() -> tuple[set[asyncio.Task[Any]], bool]:
    tasks = asyncio.all_tasks() - _watchers
    return tasks, any(can_run(t) for t in tasks)


async def until_quiet(done: Callable[[], bool], backstop: float) -> bool:
    """Yield until ``done()`` (True) or the loop is quiet (False); False also after
    ``backstop`` seconds, for a loop that never goes quiet (a task polling in a tight
    ``asyncio.sleep(0)`` loop)."""
    me = asyncio.current_task()
    if me is not None:
        _watchers.add(me)
    try:
        deadline = time.monotonic() + backstop
        before: set[asyncio.Task[Any]] | None = None
        while True:
            await asyncio.sleep(0)
            if done():
                return True
            tasks, busy = _look()
            if not busy and tasks == before:
                return False
            before = None if busy else tasks
            if time.monotonic() >= deadline:
                return False
    finally:
        if me is not None:
            _watchers.discard(me)
