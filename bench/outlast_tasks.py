"""The tasks outlast_bench.py triggers; workers load this file with ``--app``.

Task ids are global, so every id here starts with ``bench-``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from outlast import current_run, queue, step, task, wait

FANOUT_LIMIT = 10
CHILD_SECONDS = 0.02


@task(id="bench-noop")
async def noop(payload: Any) -> None:
    return None


async def _nothing() -> int:
    return 1


@task(id="bench-stamp")
async def stamp(payload: Any) -> float:
    """The wall clock at the first line of the body: the latency figure's end."""
    return time.time()


@task(id="bench-three-steps")
async def three_steps(payload: Any) -> int:
    a = await step.run("one", _nothing)
    b = await step.run("two", _nothing)
    c = await step.run("three", _nothing)
    return a + b + c


@task(id="bench-fanout-child", queue=queue("bench-fanout", concurrency_limit=FANOUT_LIMIT))
async def fanout_child(payload: int) -> int:
    await asyncio.sleep(CHILD_SECONDS)
    return payload


@task(id="bench-fanout-parent")
async def fanout_parent(payload: int) -> int:
    results = await fanout_child.batch_trigger_and_wait(list(range(payload)))
    return sum(1 for r in results if r.ok)


@task(id="bench-timer")
async def timer(payload: float) -> None:
    # wait.until and wait.sleep share one code path (a sleep waitpoint with a due time);
    # an absolute time lets every run fall due at the same moment however long parking
    # 10,000 of them takes.
    await wait.until(datetime.fromtimestamp(payload, UTC))


@task(id="bench-crash")
async def crash(payload: float) -> int:
    """Sleeps on its first attempt (the benchmark kills the worker meanwhile)."""
    attempt = current_run().attempt
    if attempt == 1:
        await asyncio.sleep(payload)
    return attempt
