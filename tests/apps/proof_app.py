"""A task for tests/test_guarantee_proofs.py's crash test, served by a real `outlast worker`.

Its one step body records its effect in a ledger file outside the platform (one O_APPEND
write per line), with the step's idempotency key, after waiting for the test's gate file:
so the test can hold the commit of the result back and kill the worker between the body
returning and that commit (C3).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import outlast
from outlast import Retry, step, task

# A lost worker re-queues the run at once.
_NO_WAIT = Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False)


def note(ledger: str, **fields: Any) -> None:
    line = (json.dumps({**fields, "pid": os.getpid()}, sort_keys=True) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def _charge(ledger: str, gate: str) -> str:
    run = outlast.current_run()
    note(ledger, ev="begin", attempt=run.attempt)
    while not os.path.exists(gate):
        await asyncio.sleep(0.02)
    # The effect, with the key an outside service would deduplicate on.
    note(ledger, ev="effect", attempt=run.attempt, key=step.idempotency_key())
    return f"charged@{os.getpid()}"


@task(id="proof-charge", retry=_NO_WAIT)
async def proof_charge(p: dict[str, Any]) -> str:
    return str(await step.run("charge", _charge, p["ledger"], p["gate"]))
