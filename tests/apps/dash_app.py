"""Tasks for the dashboard tests: served in-process by the server-side tests and by an
`outlast dev` process in the browser test."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

import outlast
from outlast import Retry, logger, metadata, queue, step, task, wait

_NO_WAIT = Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False)

# A queue that never starts anything: its runs stay QUEUED until cancelled.
held = queue("dash-held", concurrency_limit=0)


class PipelineIn(BaseModel):
    label: str
    items: int = Field(ge=1, le=1000)
    step_ms: int = Field(default=0, ge=0, le=5000)


async def _work(name: str, ms: int, value: Any) -> Any:
    await asyncio.sleep(ms / 1000)
    logger.info(f"{name} done", step=name)
    return value


@task(id="dash-pipeline", retry=_NO_WAIT, tags=["dash"])
async def pipeline(p: PipelineIn) -> dict[str, Any]:
    rows = await step.run("fetch", _work, "fetch", p.step_ms, list(range(p.items)))
    metadata.set("progress", 1 / 3)
    doubled = await step.run("transform", _work, "transform", p.step_ms, [r * 2 for r in rows])
    metadata.set("progress", 2 / 3)
    total = await step.run("store", _work, "store", p.step_ms, sum(doubled))
    metadata.set("progress", 1.0)
    return {"label": p.label, "total": total}


@task(id="dash-approval", retry=_NO_WAIT)
async def approval(p: dict[str, Any]) -> dict[str, Any]:
    token = await wait.create_token(timeout=3600, tags=["dash", f"order:{p.get('order')}"])
    metadata.set("token", token.id)
    logger.info("waiting for approval", token=token.id)
    result = await wait.for_token(token)
    approved = bool((result.output or {}).get("approved")) if result.ok else False
    logger.info("decision", approved=approved)
    return {"order": p.get("order"), "approved": approved}


@task(id="dash-child", retry=_NO_WAIT)
async def child(p: int) -> int:
    return p * 2


@task(id="dash-parent", retry=_NO_WAIT)
async def parent(p: dict[str, Any]) -> list[int]:
    results = await child.batch_trigger_and_wait([1, 2])
    return [r.unwrap() for r in results]


@task(id="dash-flaky", retry=_NO_WAIT)
async def flaky(p: dict[str, Any]) -> str:
    if outlast.current_run().attempt == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@task(id="dash-boom", retry=Retry(max_attempts=1))
async def boom(p: dict[str, Any]) -> None:
    raise ValueError("card declined")


@task(id="dash-held", queue=held)
async def never_runs(p: dict[str, Any]) -> None:
    return None


@task(id="dash-shipping", retry=_NO_WAIT)
async def shipping(p: dict[str, Any]) -> str:
    """A token whose dashboard buttons send what this task checks (``ok``)."""
    token = await wait.create_token(
        timeout=3600, buttons={"Ship it": {"ok": True}, "Hold": {"ok": False}})
    metadata.set("token", token.id)
    result = await wait.for_token(token)
    return "shipped" if (result.output or {}).get("ok") else "held"


TASKS = {t.id: t for t in (pipeline, approval, child, parent, flaky, boom, never_runs,
                          shipping)}
