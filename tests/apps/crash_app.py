"""Tasks for the crash tests (tests/test_crash.py), served by real `outlast worker` processes.

Every step body writes what it does to a ledger file named in the payload, outside the
platform: one JSON line per event, appended with O_APPEND in a single write(2), so lines
from several processes never interleave. The tests count executions from the ledger, not
from anything outlast records about itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import outlast
from outlast import Retry, queue, step, task

# worker_lost re-queues at once; the backoff of other failures is irrelevant here.
_NO_WAIT = Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False)


# Set by a test: the app's import waits here, as a slow import would, until the file exists.
_IMPORT_GATE = os.environ.get("CRASH_APP_IMPORT_GATE")
if _IMPORT_GATE:
    with open(_IMPORT_GATE + ".importing", "w"):
        pass
    while not os.path.exists(_IMPORT_GATE):
        time.sleep(0.02)


def note(ledger: str, **fields: Any) -> None:
    """Append one event line to the ledger (atomic: one O_APPEND write of < PIPE_BUF)."""
    fields.setdefault("pid", os.getpid())
    fields.setdefault("t", time.time())
    line = (json.dumps(fields, sort_keys=True) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def _gate(path: str | None) -> None:
    """Block until the test creates ``path`` (no-op when None)."""
    while path is not None and not os.path.exists(path):
        await asyncio.sleep(0.02)


async def _body(ledger: str, name: str, gate: str | None = None, sleep: float = 0.0) -> str:
    run = outlast.current_run()
    note(ledger, run=run.id, step=name, ev="begin", attempt=run.attempt)
    await _gate(gate)
    if sleep:
        await asyncio.sleep(sleep)
    note(ledger, run=run.id, step=name, ev="end", attempt=run.attempt)
    return f"{name}@{os.getpid()}"


@task(id="crash-steps", retry=_NO_WAIT)
async def crash_steps(p: dict[str, Any]) -> dict[str, str]:
    """Three steps; the middle one waits for the test's gate file."""
    one = await step.run("one", _body, p["ledger"], "one")
    two = await step.run("two", _body, p["ledger"], "two", p["gate"])
    three = await step.run("three", _body, p["ledger"], "three")
    return {"one": one, "two": two, "three": three}


@task(id="crash-hold", retry=_NO_WAIT)
async def crash_hold(p: dict[str, Any]) -> str:
    """One step that sleeps ``sleep`` seconds, or waits for ``gate`` if given."""
    return str(await step.run("work", _body, p["ledger"], "work", p.get("gate"), p.get("sleep", 0)))


def _sync_body(ledger: str, name: str, gate: str) -> str:
    run = outlast.current_run()
    note(ledger, run=run.id, step=name, ev="begin", attempt=run.attempt)
    while not os.path.exists(gate):  # blocking, as sync code is: no cancellation point
        time.sleep(0.02)
    note(ledger, run=run.id, step=name, ev="end", attempt=run.attempt)
    return f"{name}@{os.getpid()}"


@task(id="crash-sync-hold", retry=_NO_WAIT)
def crash_sync_hold(p: dict[str, Any]) -> str:
    """A sync task whose sync step waits for ``gate`` in a worker thread."""
    return str(step.run_sync("work", _sync_body, p["ledger"], "work", p["gate"]))


@task(id="crash-poison", retry=_NO_WAIT)
async def crash_poison(p: dict[str, Any]) -> None:
    """Kills the worker that runs it, on every attempt."""

    async def boom() -> None:
        run = outlast.current_run()
        note(p["ledger"], run=run.id, step="boom", ev="begin", attempt=run.attempt)
        os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(60)  # pragma: no cover - the process is gone

    await step.run("boom", boom)


@task(id="crash-append", retry=Retry(max_attempts=10, min_delay=0.0, max_delay=0.0, jitter=False))
async def crash_append(p: dict[str, Any]) -> int:
    """No-op-ish: records that this run executed, and in which process."""
    run = outlast.current_run()
    note(p["ledger"], run=run.id, attempt=run.attempt)
    if p.get("sleep"):
        await asyncio.sleep(p["sleep"])
    return int(p.get("n", 0))


@task(
    id="crash-limited",
    retry=_NO_WAIT,
    queue=queue("crash-limited", concurrency_limit=2),
)
async def crash_limited(p: dict[str, Any]) -> int:
    """A short run of a queue that allows two at once, so workers hold successors
    DEQUEUED; ``poison`` kills the worker as soon as the run's code starts."""
    run = outlast.current_run()
    note(p["ledger"], run=run.id, ev="begin", attempt=run.attempt)
    if p.get("poison"):
        os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(p.get("sleep", 0.01))
    note(p["ledger"], run=run.id, ev="end", attempt=run.attempt)
    return int(p.get("n", 0))
