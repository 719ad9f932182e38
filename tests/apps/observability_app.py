"""Tasks for the observability tests (tests/test_observability_e2e.py), served by real
`outlast worker` processes. Markers in the payload's directory say how far a run got, so
a test can kill the worker at a known point."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from outlast import AbortRun, Retry, logger, queue, step, task, wait


@task(id="obs-child", retry=Retry(max_attempts=1))
async def obs_child(p: dict[str, Any]) -> int:
    return int(p["n"]) + 1


@task(id="obs-parent", retry=Retry(max_attempts=5, min_delay=0.2, max_delay=0.2, jitter=False))
async def obs_parent(p: dict[str, Any]) -> int:
    marks = Path(p["dir"])
    a = await step.run("a", lambda: 1)

    async def b() -> int:
        if not (marks / "b-failed").exists():
            (marks / "b-failed").touch()
            raise RuntimeError("flaky b")
        return 2

    got = await step.run("b", b)

    def slow() -> int:
        if not (marks / "slow-started").exists():
            (marks / "slow-started").touch()
            time.sleep(60)  # the test kills the worker here
        return 3

    c = await step.run("slow", slow)
    logger.info("slow done", c=c)
    await wait.sleep(1.5)  # longer than an in-place sleep: the run parks
    r = await obs_child.trigger_and_wait({"n": a + got + c})
    return int(r.output)


@task(id="obs-quick", queue=queue("obs-quick", concurrency_limit=5))
async def obs_quick(p: dict[str, Any]) -> int:
    if p.get("fail"):
        raise AbortRun("refused")
    return 1
