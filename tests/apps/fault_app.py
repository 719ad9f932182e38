"""Tasks for the fault suite (tests/faults/), served by real `outlast worker` processes.

Step bodies write to a ledger file named in the payload (as tests/apps/crash_app.py does),
so a test counts step-body executions from outside the platform.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import outlast
from outlast import Retry, step, task

from .crash_app import note

# A fault costs an attempt (worker_lost) each time it strikes a run; a drain through
# several database restarts must not fail runs for that.
_MANY = Retry(max_attempts=20, min_delay=0.0, max_delay=0.0, jitter=False)


@task(id="fault-noop", retry=_MANY)
async def fault_noop(p: dict[str, Any]) -> int:
    """Nothing: a drain of these measures the platform alone."""
    return int(p.get("n", 0))


async def _body(ledger: str, name: str, sleep: float) -> str:
    run = outlast.current_run()
    note(ledger, run=run.id, step=name, ev="begin", attempt=run.attempt)
    await asyncio.sleep(sleep)
    note(ledger, run=run.id, step=name, ev="end", attempt=run.attempt)
    return f"{name}@{os.getpid()}"


@task(id="fault-steps", retry=_MANY)
async def fault_steps(p: dict[str, Any]) -> list[str]:
    """``steps`` steps of ``sleep`` seconds each, every body noted in the ledger."""
    done = []
    for i in range(int(p.get("steps", 3))):
        done.append(str(await step.run(f"s{i}", _body, p["ledger"], f"s{i}", p.get("sleep", 0.2))))
    return done


@task(id="fault-block", retry=_MANY)
async def fault_block(p: dict[str, Any]) -> str:
    """Blocks the event loop for ``seconds`` (a sync call in async code), between steps."""
    await step.run("before", _body, p["ledger"], "before", 0.0)
    time.sleep(float(p["seconds"]))
    await step.run("after", _body, p["ledger"], "after", 0.0)
    return "done"
