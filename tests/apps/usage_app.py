"""Tasks for tests/test_usage.py's real worker processes: an attempt that a test kills
with SIGKILL mid-step (its first attempt hangs), then completes on the next."""

from __future__ import annotations

import time

import outlast
from outlast import Retry, step, task


def _work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(id="usage-killed", retry=Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False))
async def killed(payload: dict[str, float]) -> float:
    # The first attempt runs long enough to be killed; later ones finish quickly.
    seconds = payload["first"] if outlast.current_run().attempt == 1 else payload["then"]
    return await step.run("work", _work, seconds)
