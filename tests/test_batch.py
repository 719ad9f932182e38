"""Batched event subscribers on both backends (issue 20, part 5): the task receives a list
of events' data (typed), the batch starts with max_size events or timeout after its
first, per key when asked; each event lands in exactly one batch under concurrent
publishers on PostgreSQL (and with three worker processes: test_debounce.py's
test_three_worker_processes_one_run_per_key batches too)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from outlast import Batch, Debounce, Worker, task
from outlast._clock import FakeClock
from outlast._errors import ConfigurationError, ValidationError
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import Store
from tests.test_debounce import _race


class Item(BaseModel):
    sku: str
    qty: int


@task(id="bt-items", on=["cart.item"], batch=Batch(max_size=3, timeout=5))
async def items(payload: list[Item]) -> int:
    return sum(i.qty for i in payload)


@task(id="bt-tenant", on=["tenant.item"], batch=Batch(max_size=100, timeout=5, key="data.tenant"))
async def per_tenant(payload: list[dict[str, Any]]) -> list[int]:
    return [p["n"] for p in payload]


@task(id="bt-many", on=["many.*"], batch=Batch(max_size=10, timeout=60))
async def many(payload: list[dict[str, Any]]) -> int:
    return len(payload)


TASKS = {t.id: t for t in (items, per_tenant, many)}


def _publish_definitions(store: Store) -> None:
    store.publish_tasks("dev", [t.definition() for t in TASKS.values()])


async def _drive(store: Store, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    store.tick()
    worker = Worker(store, tasks=TASKS, env="dev")
    await worker.run_until_idle()
    await worker.shutdown(grace=0)


async def test_batch_by_size_gives_the_task_a_typed_list(
    store: Store, client: Client, clock: FakeClock
) -> None:
    _publish_definitions(store)
    for n in range(7):
        client.publish("cart.item", {"sku": f"s{n}", "qty": n})
    runs = sorted(client.list_runs(task_id="bt-items"), key=lambda r: r.created_at)
    assert [r.status for r in sorted(runs, key=lambda r: r.payload[0]["qty"])] == [
        RunStatus.QUEUED, RunStatus.QUEUED, RunStatus.DELAYED]
    payloads = sorted(([i["qty"] for i in r.payload] for r in runs), key=lambda p: p[0])
    assert payloads == [[0, 1, 2], [3, 4, 5], [6]]
    full = [r for r in runs if r.status == RunStatus.QUEUED]
    assert all(r.metadata["batch"]["count"] == 3 for r in full)
    await _drive(store, clock, 0)
    assert sorted(client.retrieve(r.id).output for r in full) == [3, 12]
    outcomes = {d["outcome"] for e in client.list_events(limit=10) for d in e["deliveries"]}
    assert outcomes == {"batched"}


async def test_batch_by_timeout(store: Store, client: Client, clock: FakeClock) -> None:
    _publish_definitions(store)
    client.publish("cart.item", {"sku": "a", "qty": 1})
    clock.advance(3)
    client.publish("cart.item", {"sku": "b", "qty": 2})
    [run] = client.list_runs(task_id="bt-items")
    await _drive(store, clock, 1)  # 4 s after the first: still gathering
    assert client.retrieve(run.id).status == RunStatus.DELAYED
    clock.advance(1)  # 5 s after the first: the batch is closed, even before a tick
    client.publish("cart.item", {"sku": "c", "qty": 4})
    await _drive(store, clock, 0)
    assert client.retrieve(run.id).output == 3
    later = [r for r in client.list_runs(task_id="bt-items") if r.id != run.id]
    assert len(later) == 1 and later[0].payload == [{"sku": "c", "qty": 4}]


async def test_batch_per_key(store: Store, client: Client, clock: FakeClock) -> None:
    _publish_definitions(store)
    for n in range(6):
        client.publish("tenant.item", {"tenant": "t1" if n % 3 else "t0", "n": n})
    await _drive(store, clock, 5)
    runs = {r.metadata["batch"]["key"]: r for r in client.list_runs(task_id="bt-tenant")}
    assert runs["t0"].output == [0, 3] and runs["t1"].output == [1, 2, 4, 5]


async def test_an_event_that_does_not_fit_the_type_is_named(
    store: Store, client: Client
) -> None:
    _publish_definitions(store)
    client.publish("cart.item", {"sku": "a", "qty": "many"})
    [event] = client.list_events()
    [delivery] = event["deliveries"]
    assert delivery["outcome"] == "batched" and "qty" in delivery["reason"]


def test_bad_batch_is_refused_naming_the_field() -> None:
    for kwargs, field in (({"max_size": 0}, "batch.max_size"),
                          ({"max_size": 5000}, "batch.max_size"),
                          ({"timeout": 0}, "batch.timeout"),
                          ({"timeout": -1}, "batch.timeout"),
                          ({"key": ""}, "batch.key")):
        with pytest.raises(ValidationError) as exc:
            Batch(**kwargs)
        assert exc.value.field == field
    with pytest.raises(ConfigurationError, match="not both"):
        task(id="bt-both", on=["x"], batch=Batch(), debounce=Debounce("data.a", period=1))(
            items.fn)
    with pytest.raises(ConfigurationError) as key:
        task(id="bt-bad-key", on=["x"], batch=Batch(key="data[")) (items.fn)
    assert key.value.details["field"] == "batch.key"


@pytest.mark.parametrize("backend", ["postgres"])
def test_concurrent_publishes_put_each_event_in_one_batch(
    db_url: str, store: Store, client: Client, clock: FakeClock
) -> None:
    _publish_definitions(store)
    # A name per thread: publishes of one name queue behind its lock (ev_lock_name), so
    # these meet only at the group's row.
    work = [[(f"many.t{t}", {"n": t * 100 + n}) for n in range(20)] for t in range(5)]
    _race(db_url, clock, work)
    runs = client.list_runs(task_id="bt-many")
    assert len(runs) == 10 and all(r.status == RunStatus.QUEUED for r in runs)
    seen = sorted(i["n"] for r in runs for i in r.payload)
    assert seen == sorted(t * 100 + n for t in range(5) for n in range(20))
