"""A task that reports progress by the CLI's metadata convention (``step``, ``progress``)
and holds at 40 % until the test releases it (a file appears)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from outlast import metadata, step, task


def fetch() -> int:
    return 10


@task(id="progress-demo")
async def progress_demo(payload: dict[str, Any]) -> dict[str, int]:
    pages = await step.run("fetch-index", fetch)
    metadata.set("step", "exporting pages")
    for page in range(1, 5):
        metadata.set("progress", {"done": page, "total": pages})
        await asyncio.sleep(0.05)
    for _ in range(600):  # at most 60 s: the test releases it as soon as it has looked
        if os.path.exists(payload["release"]):
            break
        await asyncio.sleep(0.1)
    metadata.set("progress", 1.0)
    return {"pages": pages}
