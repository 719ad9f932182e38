"""The PgQueuer consumer that pgqueuer_bench.py runs with ``pgq run pgq_app:factory``.

BENCH_DSN names the database; BENCH_LIMIT, when set, is the entrypoint's
``concurrency_limit`` (PgQueuer's per-entrypoint cap, enforced in its dequeue SQL).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job


@asynccontextmanager
async def factory() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(os.environ["BENCH_DSN"])
    pgq = PgQueuer(AsyncpgDriver(connection))
    limit = int(os.environ.get("BENCH_LIMIT") or 0)

    @pgq.entrypoint("noop", concurrency_limit=limit)
    async def noop(job: Job) -> None:
        return None

    @pgq.entrypoint("crash")
    async def crash(job: Job) -> None:
        await asyncio.sleep(float(job.payload or b"60"))

    try:
        yield pgq
    finally:
        await connection.close()


def main() -> None:
    """What ``pgq run pgq_app:factory`` does, with its defaults. (pgqueuer 1.6.0's own CLI
    fails at start-up here: its --log-level default reaches logging as a str.)"""
    from datetime import timedelta

    from pgqueuer.adapters.cli import supervisor
    from pgqueuer.adapters.cli.cli import asyncio_run
    from pgqueuer.types import QueueExecutionMode

    asyncio_run(
        supervisor.run(
            "pgq_app:factory",
            dequeue_timeout=timedelta(seconds=30),
            batch_size=10,
            restart_delay=timedelta(seconds=5),
            restart_on_failure=False,
            mode=QueueExecutionMode.continuous,
            max_concurrent_tasks=None,
            shutdown_on_listener_failure=False,
            heartbeat_timeout=timedelta(seconds=30),
        )
    )


if __name__ == "__main__":
    main()
