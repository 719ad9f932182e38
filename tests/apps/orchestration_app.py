"""Tasks for the orchestration tests (waitpoints, children, queues), served by real
`outlast worker` processes and by in-process workers alike.

What the tests measure is written by task code to a ledger file named in the payload,
outside the platform: one JSON line per event, appended with O_APPEND in a single
write(2), so lines from several processes never interleave. Timestamps are
``time.monotonic()``, one clock for every process on the machine (CLOCK_MONOTONIC), so
the tests can compare start and end times across worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import outlast
from outlast import Retry, queue, step, task, wait

fan_queue = queue("orch-fan", concurrency_limit=10)
rate_queue = queue("orch-rate", rate_limit=(20, 1.0))

# A lost worker re-queues its runs at once; other failures' backoff is irrelevant here.
_NO_WAIT = Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False)


def note(ledger: str, **fields: Any) -> None:
    """Append one event line to the ledger (atomic: one O_APPEND write of < PIPE_BUF)."""
    fields.setdefault("pid", os.getpid())
    fields.setdefault("t", time.monotonic())
    line = (json.dumps(fields, sort_keys=True) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_ledger(ledger: str) -> list[dict[str, Any]]:
    """The complete lines so far (a line being appended right now may be cut short)."""
    if not os.path.exists(ledger):
        return []
    with open(ledger) as f:
        lines = f.read().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]


# -- fan-out under a concurrency limit ------------------------------------------------------


@task(id="orch-fan-child", queue=fan_queue, retry=_NO_WAIT)
async def fan_child(p: dict[str, Any]) -> int:
    run = outlast.current_run()
    note(p["ledger"], run=run.id, ev="start")
    await asyncio.sleep(p.get("ms", 0) / 1000)
    note(p["ledger"], run=run.id, ev="end")
    return int(p["i"]) * 2


@task(id="orch-fan-parent", retry=_NO_WAIT)
async def fan_parent(p: dict[str, Any]) -> dict[str, Any]:
    items = [{"i": i, "ledger": p["ledger"], "ms": p.get("ms", 0)} for i in range(p["n"])]
    results = await fan_child.batch_trigger_and_wait(items)
    return {
        "ok": sum(1 for r in results if r.ok),
        "in_order": [r.output for r in results] == [i * 2 for i in range(p["n"])],
    }


# -- rate limit -----------------------------------------------------------------------------


@task(id="orch-rate-item", queue=rate_queue)
async def rate_item(p: dict[str, Any]) -> None:
    note(p["ledger"], run=outlast.current_run().id, ev="start")


# -- parallel waits across a worker kill ----------------------------------------------------


@task(id="orch-gather-child", retry=_NO_WAIT)
async def gather_child(p: dict[str, Any]) -> int:
    note(p["ledger"], run=outlast.current_run().id, ev="child")
    return int(p["x"]) * 10


async def _slow_step(ledger: str, gate: str, value: int) -> int:
    note(ledger, run=outlast.current_run().id, ev="step-begin")
    # The test kills the worker while this waits; the next attempt finds the gate open.
    while os.path.exists(gate):
        await asyncio.sleep(0.02)
    note(ledger, run=outlast.current_run().id, ev="step-end")
    return value + 1


@task(id="orch-gather", retry=_NO_WAIT)
async def gather_parent(p: dict[str, Any]) -> dict[str, Any]:
    stepped, child, _ = await asyncio.gather(
        step.run("slow", _slow_step, p["ledger"], p["gate"], p["x"]),
        gather_child.trigger_and_wait({"x": p["x"], "ledger": p["ledger"]}),
        wait.sleep(p["sleep"]),
    )
    return {"step": stepped, "child": child.output, "child_ok": child.ok}
