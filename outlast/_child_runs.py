"""Child runs triggered from inside a run: journaled, so a replay never triggers twice.

``task.trigger`` inside a task starts children in the transaction that journals the call;
``trigger_and_wait`` also creates the waitpoint they complete when they all end, and the
parent suspends on it like on any wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import _serde
from ._ids import derived_id
from ._run_context import RunContext, _require, fingerprint
from ._trigger import TriggerOptions, task_run
from .runs import Run, RunHandle, RunStatus, TaskRunResult
from .store.base import NewRun

if TYPE_CHECKING:
    from .tasks import Task

T = TypeVar("T")


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
    fp = fingerprint(task.id, payloads)
    async with ctx.call(f"trigger:{task.id}", "trigger", fp) as call:
        if call.entry is None:
            children = _child_runs(ctx, task, payloads, options, None)
            op = call.start_wait(ctx.store.now(), children=children)
            await ctx.commit(op)
            ids = op.result_ids
        else:
            ids = _serde.loads(call.entry.output) or []
        return [RunHandle(id=i, task_id=task.id, _output_type=task.return_type) for i in ids]


async def wait_for_children(
    task: Task[Any, T], payloads: Sequence[Any], options: TriggerOptions, *, batch: bool
) -> list[TaskRunResult[T]]:
    ctx = _require("trigger_and_wait()")
    name = f"{'batch_' if batch else ''}trigger_and_wait:{task.id}"
    async with ctx.call(name, "children", fingerprint(task.id, payloads)) as call:
        if call.entry is None:
            waitpoint_id = derived_id("waitpoint", ctx.run.id, call.key)
            children = _child_runs(ctx, task, payloads, options, waitpoint_id)
            await ctx.commit(
                call.start_wait(
                    ctx.store.now(),
                    waitpoint_id=waitpoint_id,
                    new_waitpoint_kind="children",
                    children=children,
                )
            )
        else:
            waitpoint_id = call.entry.waitpoint_id or ""
            state = ctx.waitpoints.get(waitpoint_id)
            if state is not None and state.status != "pending":
                ids = _serde.loads(call.entry.output) or []
                runs = await asyncio.to_thread(ctx.store.get_runs, ctx.run.env, ids)
                return [_child_result(r, task.return_type) for r in runs]
        await ctx.block(call.key, waitpoint_id)
        raise AssertionError("unreachable")  # pragma: no cover


def _child_result(run: Run, return_type: Any) -> TaskRunResult[Any]:
    ok = run.status == RunStatus.COMPLETED
    output = _serde.from_json(_serde.dumps(run.output), return_type) if ok else None
    return TaskRunResult(
        ok=ok, id=run.id, task_id=run.task_id, status=run.status, output=output, error=run.error
    )
