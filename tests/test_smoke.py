"""The shortest end-to-end path on both backends: trigger, run, read the output."""

from __future__ import annotations

from outlast import Worker, step, task
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import Store


@task(id="smoke-add")
async def smoke_add(payload: dict[str, int]) -> int:
    a = await step.run("double", lambda: payload["x"] * 2)
    return a + 1


async def test_trigger_run_complete(store: Store, client: Client) -> None:
    handle = await smoke_add.trigger({"x": 20})
    worker = Worker(store, tasks={"smoke-add": smoke_add})
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED
    assert run.output == 41
