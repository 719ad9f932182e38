"""A task no test worker serves (tests/test_metrics.py): its runs stay queued."""

from __future__ import annotations

from typing import Any

from outlast import queue, task

backlog = queue("obs-backlog", concurrency_limit=3)


@task(id="obs-backlog", queue=backlog)
async def obs_backlog(p: Any) -> None:
    return None
