"""Triggering, on real SQLite and real PostgreSQL: idempotency keys, delay, ttl, cancel,
replay, batches, and bad input refused with the field named and nothing written."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pydantic
import pytest

from outlast import (
    AbortRun,
    PayloadTooLarge,
    Retry,
    UnknownTask,
    ValidationError,
    Worker,
    task,
)
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunHandle, RunStatus
from outlast.store.base import Store
from outlast.tasks import TriggerOptions

LEDGER: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    LEDGER.clear()


def total_runs(store: Store) -> int:
    return sum(n for by_status in store.count_runs("dev").values() for n in by_status.values())


@task(id="eng-echo", retry=Retry(max_attempts=1))
async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    LEDGER[f"echo:{payload.get('n')}"] += 1
    if payload.get("abort"):
        raise AbortRun("asked to fail")
    return payload


# -- idempotency keys --------------------------------------------------------------------------


def test_concurrent_triggers_with_one_idempotency_key_create_one_run(
    db_url: str, store: Store, clock: FakeClock
) -> None:
    n = 20
    clients = [Client(db_url, env="dev", clock=clock) for _ in range(n)]
    barrier = threading.Barrier(n)
    handles: list[RunHandle[Any] | None] = [None] * n
    errors: list[BaseException] = []

    def trigger(i: int) -> None:
        try:
            clients[i]._ready()  # schema check first, so the race is on the insert itself
            barrier.wait(timeout=30)
            handles[i] = clients[i].trigger(echo, {"n": i}, idempotency_key="order-42")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for c in clients:
            c.close()

    assert errors == []
    got = [h for h in handles if h is not None]
    assert len(got) == n
    assert len({h.id for h in got}) == 1
    assert sorted(h.is_cached for h in got) == [False] + [True] * (n - 1)
    assert total_runs(store) == 1
    run = store.get_run("dev", got[0].id)
    assert run is not None and run.idempotency_key == "order-42"


async def test_idempotency_key_is_released_when_its_run_failed(
    store: Store, client: Client, workers: Callable[..., Worker]
) -> None:
    first = await echo.trigger({"n": 1, "abort": True}, idempotency_key="k")
    again = await echo.trigger({"n": 2}, idempotency_key="k")
    assert not first.is_cached
    assert again.is_cached and again.id == first.id  # still queued: the same run
    await workers(echo).run_until_idle()
    assert client.retrieve(first.id).status == RunStatus.FAILED

    after = await echo.trigger({"n": 3}, idempotency_key="k")
    assert not after.is_cached and after.id != first.id
    assert client.retrieve(after.id).payload == {"n": 3}
    assert total_runs(store) == 2


async def test_idempotency_key_of_a_completed_run_returns_it(
    store: Store, client: Client, workers: Callable[..., Worker]
) -> None:
    first = await echo.trigger({"n": 1}, idempotency_key="k")
    await workers(echo).run_until_idle()
    assert client.retrieve(first.id).status == RunStatus.COMPLETED
    again = await echo.trigger({"n": 2}, idempotency_key="k")
    assert again.is_cached and again.id == first.id
    assert total_runs(store) == 1
    assert LEDGER == {"echo:1": 1}


async def test_idempotency_key_expires_after_its_ttl(
    store: Store, client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    first = await echo.trigger({"n": 1}, idempotency_key="k", idempotency_key_ttl=60)
    await workers(echo).run_until_idle()
    clock.advance(59)
    cached = await echo.trigger({"n": 2}, idempotency_key="k", idempotency_key_ttl=60)
    assert cached.is_cached and cached.id == first.id
    clock.advance(2)
    fresh = await echo.trigger({"n": 3}, idempotency_key="k", idempotency_key_ttl=60)
    assert not fresh.is_cached and fresh.id != first.id
    # Keys are per task: another task may use the same key.
    other = await slow_ok.trigger({}, idempotency_key="k")
    assert not other.is_cached
    assert total_runs(store) == 3


# -- delay and ttl -----------------------------------------------------------------------------


@task(id="eng-slow-ok")
async def slow_ok(payload: dict[str, Any]) -> str:
    LEDGER["slow_ok"] += 1
    return "ok"


async def test_delayed_run_is_queued_and_executed_once_its_time_comes(
    store: Store, client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    handle = await echo.trigger({"n": 1}, delay=timedelta(minutes=5))
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.DELAYED
    assert run.delay_until == pytest.approx(clock.now() + 300)

    worker = workers(echo)
    clock.advance(299)
    assert await worker.run_until_idle() == 0
    assert client.retrieve(handle.id).status == RunStatus.DELAYED

    clock.advance(2)
    assert store.tick().promoted == 1
    assert client.retrieve(handle.id).status == RunStatus.QUEUED
    assert await worker.run_until_idle() == 1
    assert client.retrieve(handle.id).status == RunStatus.COMPLETED
    assert LEDGER == {"echo:1": 1}


async def test_run_not_started_within_its_ttl_expires(
    client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    late = await echo.trigger({"n": 1}, ttl=10)
    clock.advance(11)
    worker = workers(echo)
    assert await worker.run_until_idle() == 0
    run = client.retrieve(late.id)
    assert run.status == RunStatus.EXPIRED
    assert run.error is not None and run.error["code"] == "expired"
    assert run.started_at is None

    # Started in time, it runs to the end whatever the clock says afterwards.
    on_time = await echo.trigger({"n": 2}, ttl=10)
    assert await worker.run_until_idle() == 1
    clock.advance(60)
    await worker.run_until_idle()
    assert client.retrieve(on_time.id).status == RunStatus.COMPLETED

    # With a delay, the ttl counts from the delay's end.
    delayed = await echo.trigger({"n": 3}, delay=60, ttl=10)
    clock.advance(65)
    assert await worker.run_until_idle() == 1
    assert client.retrieve(delayed.id).status == RunStatus.COMPLETED
    assert LEDGER == {"echo:2": 1, "echo:3": 1}


# -- cancel --------------------------------------------------------------------------------------


async def test_cancel_of_a_queued_run_ends_it_at_once(
    client: Client, workers: Callable[..., Worker]
) -> None:
    handle = await echo.trigger({"n": 1})
    run = client.cancel(handle.id)
    assert run.status == RunStatus.CANCELED
    assert run.finished_at is not None
    assert await workers(echo).run_until_idle() == 0
    assert client.retrieve(handle.id).status == RunStatus.CANCELED
    assert LEDGER == {}


@task(id="eng-long")
async def long_running(payload: dict[str, Any]) -> None:
    LEDGER["started"] += 1
    await asyncio.sleep(30)
    LEDGER["finished"] += 1


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_cancel_of_an_executing_run_stops_it_within_a_second(
    store: Store, client: Client, workers: Callable[..., Worker]
) -> None:
    handle = await long_running.trigger({})
    worker = workers(long_running, heartbeat_interval=0.05, poll_interval=0.02, scheduler=False)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: LEDGER["started"] == 1)
        run = await asyncio.to_thread(client.cancel, handle.id)
        t0 = time.monotonic()
        assert run.status == RunStatus.EXECUTING and run.cancel_requested
        while (await asyncio.to_thread(client.retrieve, handle.id)).status != RunStatus.CANCELED:
            assert time.monotonic() - t0 < 1.0, "the executing run was not cancelled in time"
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    run = client.retrieve(handle.id)
    assert run.error is not None and run.error["code"] == "canceled"
    assert run.worker_id is None
    assert LEDGER == {"started": 1}
    (q,) = [q for q in client.list_queues() if q["name"] == long_running.queue.name]
    assert q["executing"] == 0  # its concurrency slot came back


# -- replay --------------------------------------------------------------------------------------


async def test_replay_creates_a_linked_run_with_an_optionally_edited_payload(
    client: Client, workers: Callable[..., Worker]
) -> None:
    original = await echo.trigger({"n": 1}, tags=["org:42"])
    worker = workers(echo)
    await worker.run_until_idle()

    same = client.replay(original.id)
    edited = client.replay(original.id, payload={"n": 2})
    assert len({original.id, same.id, edited.id}) == 3
    await worker.run_until_idle()

    for handle, payload in ((same, {"n": 1}), (edited, {"n": 2})):
        run = client.retrieve(handle.id)
        assert run.replayed_from == original.id
        assert run.task_id == echo.id
        assert run.tags == ["org:42"]
        assert run.payload == payload
        assert run.status == RunStatus.COMPLETED and run.output == payload
    assert client.retrieve(original.id).replayed_from is None
    assert LEDGER == {"echo:1": 2, "echo:2": 1}


# -- bad input -----------------------------------------------------------------------------------


class Order(pydantic.BaseModel):
    order_id: int
    email: str


@task(id="eng-order")
async def place_order(payload: Order) -> int:
    return payload.order_id


INVALID_PAYLOADS: list[tuple[Any, str]] = [
    ({"order_id": "not-a-number", "email": "a@example.com"}, "payload.order_id"),
    ({"order_id": 1}, "payload.email"),
    ("a string", "payload"),
]


async def test_invalid_payload_is_refused_with_the_field_named(
    store: Store, client: Client
) -> None:
    for payload, field in INVALID_PAYLOADS:
        with pytest.raises(ValidationError) as info:
            await place_order.trigger(payload)
        assert info.value.field == field
        assert info.value.code == "validation_error"
        assert field in str(info.value)
        with pytest.raises(ValidationError):
            client.trigger(place_order.id, payload)  # by id, as an app that only knows the id
    assert total_runs(store) == 0

    ok = await place_order.trigger({"order_id": "7", "email": "a@example.com"})
    assert client.retrieve(ok.id).payload == {"order_id": 7, "email": "a@example.com"}


INVALID_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"delay": -1}, "delay"),
    ({"ttl": timedelta(seconds=-5)}, "ttl"),
    ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"max_attempts": -1}, "max_attempts"),
]


def test_invalid_trigger_option_is_refused_with_the_field_named(
    store: Store, client: Client
) -> None:
    for options, field in INVALID_OPTIONS:
        with pytest.raises(ValidationError) as info:
            client.trigger(echo, {"n": 1}, **options)
        assert info.value.field == field, options
    assert total_runs(store) == 0


def test_unknown_task_is_refused(store: Store, client: Client) -> None:
    with pytest.raises(UnknownTask) as info:
        client.trigger("nope", {"x": 1})
    assert "'nope'" in str(info.value)
    assert info.value.code == "unknown_task"
    assert total_runs(store) == 0


def test_payload_over_the_size_limit_is_refused(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTLAST_MAX_PAYLOAD_BYTES", "1000")
    with pytest.raises(PayloadTooLarge) as info:
        client.trigger(echo, {"blob": "x" * 2000})
    assert info.value.field == "payload"
    assert info.value.code == "payload_too_large"
    assert "1000" in str(info.value)
    with pytest.raises(PayloadTooLarge) as batch_info:
        client.batch_trigger(echo, [{"n": 1}, {"n": 2}, {"blob": "x" * 2000}])
    assert batch_info.value.field is not None and batch_info.value.field.startswith("items[2]")
    assert total_runs(store) == 0
    assert client.trigger(echo, {"blob": "x" * 900}).id  # under the limit it goes through


# -- batches ---------------------------------------------------------------------------------------


@task(id="eng-batch-item")
async def batch_item(payload: dict[str, int]) -> int:
    return payload["i"]


async def test_batch_trigger_of_5000_inserts_them_in_one_call(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = store.trigger

    def counting(runs: Any) -> Any:
        calls.append(len(runs))
        return original(runs)

    monkeypatch.setattr(store, "trigger", counting)
    handles = await batch_item.batch_trigger([{"i": i} for i in range(5000)])

    assert calls == [5000]
    assert len(handles) == 5000
    assert len({h.id for h in handles}) == 5000
    assert not any(h.is_cached for h in handles)
    assert store.count_runs("dev") == {batch_item.id: {"QUEUED": 5000}}
    last = client.retrieve(handles[4999].id)
    assert last.payload == {"i": 4999}


async def test_batch_with_one_invalid_item_writes_nothing(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = store.trigger
    monkeypatch.setattr(store, "trigger", lambda runs: calls.append(len(runs)) or original(runs))
    payloads: list[Any] = [{"i": i} for i in range(5000)]
    payloads[4321] = {"i": "four"}
    with pytest.raises(ValidationError) as info:
        await batch_item.batch_trigger(payloads)
    assert info.value.field == "items[4321].payload.i"
    assert str(info.value).startswith("items[4321]")
    assert calls == []
    assert total_runs(store) == 0


def test_batch_runs_are_written_as_a_single_trigger_writes_them(
    store: Store, client: Client
) -> None:
    # A batch goes by COPY on PostgreSQL and a single run by one INSERT statement: both
    # must give the same rows, every option carried, the task's defaults applied.
    options: dict[str, Any] = dict(
        tags=["a", "b"],
        priority=5.0,
        metadata={"k": 1},
        max_attempts=7,
        concurrency_key="user-1",
        queue="eng-batch-q",
        max_duration=30.0,
        ttl=60.0,
    )
    for delay in (None, 10.0):
        one = client.trigger(batch_item, {"i": -1}, delay=delay, **options)
        again = client.trigger(batch_item, {"i": -2}, delay=delay, **options)  # queue known
        many = client.batch_trigger(batch_item, [{"i": i} for i in range(3)], delay=delay,
                                    **options)
        runs = store.get_runs("dev", [one.id, again.id] + [h.id for h in many])
        assert [r.payload for r in runs] == [{"i": -1}, {"i": -2}, {"i": 0}, {"i": 1}, {"i": 2}]
        assert runs[0].status == (RunStatus.DELAYED if delay else RunStatus.QUEUED)
        assert runs[0].tags == ["a", "b"] and runs[0].attempt == 1
        same = [
            {k: v for k, v in vars(r).items() if k not in ("id", "payload")} for r in runs
        ]
        assert all(s == same[0] for s in same), same
    tagged = client.list_runs(tag="b", limit=100)
    assert len(tagged) == 10


def test_a_batch_of_mixed_runs_is_written_as_one_by_one(store: Store, client: Client) -> None:
    # PostgreSQL's COPY reuses a row's encoding for the next run when only id and payload
    # differ: runs of other options in between, and payloads with characters text COPY
    # would escape or UTF-8 spends several bytes on, must still land as single triggers.
    plain = TriggerOptions()
    other = TriggerOptions(tags=("x",), delay=5.0, priority=2.0, queue="eng-mixed-q",
                           concurrency_key="k", metadata={"m": "é"}, ttl=9.0)
    payloads: list[Any] = [{"n": 1}, {"s": "tab\there\nline \\ é ✓ \u0000"}, {"n": [3]}]
    picks = [plain, plain, other, plain, other, other, plain]
    batch = [echo.new_run(payloads[i % 3], o, "dev") for i, o in enumerate(picks)]
    singles = [echo.new_run(payloads[i % 3], o, "dev") for i, o in enumerate(picks)]
    client.trigger(echo, {"n": 0})  # queues known, as they are for the batch below
    client.trigger(echo, {"n": 0}, options=other)
    store.trigger(batch)
    for run in singles:
        store.trigger([run])
    got = store.get_runs("dev", [r.id for r in batch])
    want = store.get_runs("dev", [r.id for r in singles])
    assert [vars(g) | {"id": ""} for g in got] == [vars(w) | {"id": ""} for w in want]
    assert [g.payload for g in got] == [payloads[i % 3] for i in range(len(picks))]
    assert {r.id for r in client.list_runs(tag="x", limit=100)} >= {batch[2].id, batch[4].id}


def test_batch_of_a_published_task_looks_it_up_once_and_checks_every_payload(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outlast.store.base import TaskDef

    schema = {
        "type": "object",
        "properties": {"i": {"type": "integer"}},
        "required": ["i"],
    }
    spec = {"retry": {"max_attempts": 4}, "tags": ["remote"]}
    store.publish_tasks("dev", [TaskDef("eng-remote", "task/eng-remote", schema, spec)])
    lookups: list[str] = []
    original = store.get_task
    monkeypatch.setattr(
        store, "get_task", lambda env, task_id: lookups.append(task_id) or original(env, task_id)
    )
    with pytest.raises(ValidationError) as info:
        client.batch_trigger("eng-remote", [{"i": 1}, {"i": "x"}, {"i": 3}])
    assert info.value.field == "items[1].payload.i"
    assert total_runs(store) == 0
    handles = client.batch_trigger("eng-remote", [{"i": i} for i in range(3)])
    assert lookups == ["eng-remote", "eng-remote"]  # once per call, not once per payload
    runs = store.get_runs("dev", [h.id for h in handles])
    assert [(r.payload, r.max_attempts, r.tags, r.queue) for r in runs] == [
        ({"i": i}, 4, ["remote"], "task/eng-remote") for i in range(3)
    ]


def test_an_invalid_option_of_a_batch_is_named_on_its_first_item(
    store: Store, client: Client
) -> None:
    with pytest.raises(ValidationError) as info:
        client.batch_trigger(batch_item, [{"i": 1}, {"i": 2}], max_attempts=-1)
    assert info.value.field == "items[0].max_attempts"
    assert total_runs(store) == 0
    assert client.batch_trigger(batch_item, []) == []
