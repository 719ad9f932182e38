"""The example app of deploy/compose.yaml: one task that writes a ledger.

Each run records itself in a table of the same PostgreSQL, in a step whose idempotency
key (run id + step key) is the ledger's primary key: the row is written once per run
however often the step body runs (a worker killed between the write and the step's
commit runs it again; `writes` counts those). scripts/container-test checks that every
run it triggered completed and has exactly one ledger row.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from outlast import current_run, step, task

LEDGER = """
CREATE TABLE IF NOT EXISTS example_ledger (
    key TEXT PRIMARY KEY,          -- the step's idempotency key
    run_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    host TEXT NOT NULL,
    writes INTEGER NOT NULL DEFAULT 1
)"""


def record(run_id: str, n: int) -> dict[str, Any]:
    import psycopg

    key = step.idempotency_key()  # "<run id>:record", the same on every retry

    with psycopg.connect(os.environ["OUTLAST_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(LEDGER)
        conn.execute(
            "INSERT INTO example_ledger (key, run_id, n, host) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET writes = example_ledger.writes + 1",
            (key, run_id, n, socket.gethostname()),
        )
    return {"run_id": run_id, "n": n}


@task(id="ledger-append")
async def ledger_append(payload: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(float(payload.get("work_seconds", 0.05)))  # some work in flight
    run = current_run()
    return await step.run("record", record, run.id, int(payload["n"]))
