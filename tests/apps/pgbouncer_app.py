"""Tasks for tests/test_pgbouncer.py, served by `outlast worker` processes behind PgBouncer."""

from __future__ import annotations

import asyncio
from typing import Any

from outlast import Retry, current_run, step, task, wait

_NO_WAIT = Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False)


async def _one() -> int:
    return 1


@task(id="pgb-steps", retry=_NO_WAIT)
async def steps(payload: Any) -> int:
    a = await step.run("one", _one)
    await wait.sleep(0.2)  # suspends (the test sets OUTLAST_INPLACE_SLEEP_SECONDS=0)
    b = await step.run("two", _one)
    return a + b


@task(id="pgb-block", retry=_NO_WAIT)
async def block(payload: Any) -> str:
    if current_run().attempt == 1:
        await asyncio.sleep(120)  # the test kills the worker here
    return "done"
