"""Tasks for the HTTP API tests: imported in-process by tests/test_server.py and served by
real `outlast worker` processes in tests/test_server_e2e.py.

What the two-server test counts is written by task code to a ledger file named in the
payload, outside the platform: one JSON line per execution, appended with O_APPEND in a
single write(2), so lines from several worker processes never interleave.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel

from outlast import Retry, logger, metadata, queue, step, task, wait


class Order(BaseModel):
    sku: str
    qty: int


@task(id="srv-order")
async def order(payload: Order) -> dict[str, Any]:
    """A typed payload: the API answers 422 naming the field when it does not fit."""
    return {"sku": payload.sku, "total": payload.qty * 2}


@task(id="srv-ledger", retry=Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False))
async def ledger(payload: dict[str, Any]) -> int:
    """Appends one line per execution: exactly-once is read from the file, not the store."""
    from outlast import current_run

    line = json.dumps({"run": current_run().id, "i": payload["i"], "pid": os.getpid()}) + "\n"
    fd = os.open(payload["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return int(payload["i"])


@task(id="srv-stream")
async def stream(payload: dict[str, Any]) -> Any:
    """Something for every kind of event frame: a step, a log line, metadata, a wait."""
    prepared = await step.run("prepare", lambda: payload.get("n", 1) * 10)
    logger.info("waiting for the token", prepared=prepared)
    metadata.set("phase", "waiting")
    result = await wait.for_token(payload["token"])
    metadata.set("phase", "done")
    return {"prepared": prepared, "token": result.output}


@task(id="srv-fail", retry=Retry(max_attempts=1))
async def fail(payload: Any) -> None:
    raise ValueError(f"cannot process {payload!r}")


@task(id="srv-child")
async def child(payload: int) -> int:
    return payload * 2


@task(id="srv-parent")
async def parent(payload: int) -> int:
    result = await child.trigger_and_wait(payload)
    return int(result.unwrap()) + 1


limited = queue("srv-limited", concurrency_limit=2)


@task(id="srv-queued", queue=limited)
async def queued(payload: Any) -> str:
    return "ran"
