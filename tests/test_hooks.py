"""Lifecycle hooks on both backends.

on_start / on_resume open an attempt, on_wait follows a suspension, and every run that
reaches a final status gets on_complete and on_end once, however it ended: completed,
failed, timed out, cancelled (executing, queued or waiting), expired, or lost with its
worker. on_success and on_failure split the outcome (a cancellation is neither). A hook
that raises is logged and never changes the run's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from outlast import AbortRun, HookEvent, Retry, Worker, metadata, task, wait
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import Store, WorkerInfo

EVENTS: list[tuple[str, str, str | None]] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()


def record(event: HookEvent) -> None:
    EVENTS.append((event.name, event.run_id, str(event.status) if event.status else None))


async def record_async(event: HookEvent) -> None:
    await asyncio.sleep(0)
    record(event)


def boom(event: HookEvent) -> None:
    record(event)
    raise RuntimeError(f"{event.name} hook is broken")


ALL = {
    f"on_{name}": record
    for name in ("start", "success", "failure", "complete", "wait", "resume", "end")
}


@task(id="orch-h-ok", **ALL)
async def ok_task(p: dict[str, Any]) -> int:
    return int(p["x"]) * 2


@task(id="orch-h-fail", **ALL)
async def fail_task(p: dict[str, Any]) -> None:
    raise AbortRun("no")


@task(id="orch-h-sleep", **{**ALL, "on_resume": record_async})
async def sleep_task(p: dict[str, Any]) -> str:
    await wait.sleep(60)
    return "rested"


@task(id="orch-h-token", **ALL)
async def token_task(p: dict[str, Any]) -> Any:
    token = await wait.create_token()
    metadata.set("token", token.id)
    return (await wait.for_token(token)).output


@task(id="orch-h-slow", max_duration=0.3, **ALL)
async def slow_task(p: dict[str, Any]) -> None:
    await asyncio.sleep(30)


@task(id="orch-h-lost", retry=Retry(max_attempts=1), **ALL)
async def lost_task(p: dict[str, Any]) -> None:
    pass


@task(
    id="orch-h-broken",
    on_start=boom,
    on_wait=boom,
    on_resume=boom,
    on_success=boom,
    on_complete=boom,
    on_end=boom,
)
async def broken_hooks(p: dict[str, Any]) -> str:
    await wait.sleep(60)
    return "fine"


@task(id="orch-h-broken-fail", on_failure=boom, on_end=boom)
async def broken_failure(p: dict[str, Any]) -> None:
    raise AbortRun("really failed")


CANCELLING: list[int] = []


async def count_cancelling(event: HookEvent) -> None:
    task = asyncio.current_task()
    assert task is not None
    CANCELLING.append(task.cancelling())


@task(id="orch-h-slow-count", max_duration=0.2, on_end=count_cancelling)
async def slow_counted_task(p: dict[str, Any]) -> None:
    await asyncio.sleep(30)


TASKS = {
    t.id: t
    for t in (
        ok_task,
        fail_task,
        sleep_task,
        token_task,
        slow_task,
        lost_task,
        broken_hooks,
        broken_failure,
        slow_counted_task,
    )
}


def _worker(store: Store, **kw: Any) -> Worker:
    return Worker(store, tasks=TASKS, **kw)


def _of(run_id: str) -> list[tuple[str, str | None]]:
    return [(name, status) for name, rid, status in EVENTS if rid == run_id]


async def test_success_and_failure_hooks(store: Store, client: Client) -> None:
    good = await ok_task.trigger({"x": 2})
    bad = await fail_task.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    assert _of(good.id) == [
        ("start", None),
        ("success", "COMPLETED"),
        ("complete", "COMPLETED"),
        ("end", "COMPLETED"),
    ]
    assert _of(bad.id) == [
        ("start", None),
        ("failure", "FAILED"),
        ("complete", "FAILED"),
        ("end", "FAILED"),
    ]


async def test_wait_and_resume_hooks(store: Store, client: Client, clock: FakeClock) -> None:
    handle = await sleep_task.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    assert _of(handle.id) == [("start", None), ("wait", None)]
    clock.advance(61)
    await worker.run_until_idle()
    await worker.shutdown()
    assert _of(handle.id) == [
        ("start", None),
        ("wait", None),
        ("resume", None),
        ("success", "COMPLETED"),
        ("complete", "COMPLETED"),
        ("end", "COMPLETED"),
    ]


async def test_end_hooks_for_a_run_cancelled_while_waiting(
    store: Store, client: Client
) -> None:
    handle = await token_task.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    client.cancel(handle.id)
    await worker.run_until_idle()
    await worker.run_until_idle()  # taken once, not again
    await worker.shutdown()
    assert _of(handle.id) == [
        ("start", None),
        ("wait", None),
        ("complete", "CANCELED"),
        ("end", "CANCELED"),
    ]


async def test_end_hooks_for_a_run_cancelled_while_queued(store: Store, client: Client) -> None:
    handle = await ok_task.trigger({"x": 1})
    client.cancel(handle.id)
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    assert _of(handle.id) == [("complete", "CANCELED"), ("end", "CANCELED")]


async def test_end_hooks_for_a_run_cancelled_while_executing(
    store: Store, client: Client
) -> None:
    handle = await slow_task.trigger({}, max_duration=60)
    worker = _worker(store, heartbeat_interval=0.02)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        # Until its start hook ran (not a count of polls: a loaded machine takes seconds
        # to claim, and a cancel before the start is the queued case above).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _of(handle.id) and client.retrieve(handle.id).status == RunStatus.EXECUTING:
                break
            await asyncio.sleep(0.01)
        assert _of(handle.id) == [("start", None)]
        client.cancel(handle.id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.retrieve(handle.id).is_final and len(_of(handle.id)) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
    assert client.retrieve(handle.id).status == RunStatus.CANCELED
    assert _of(handle.id) == [("start", None), ("complete", "CANCELED"), ("end", "CANCELED")]


async def test_end_hooks_for_an_expired_run(
    store: Store, client: Client, clock: FakeClock
) -> None:
    handle = await ok_task.trigger({"x": 1}, ttl=10)
    clock.advance(11)  # nobody claimed it in time
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    assert client.retrieve(handle.id).status == RunStatus.EXPIRED
    assert _of(handle.id) == [
        ("failure", "EXPIRED"),
        ("complete", "EXPIRED"),
        ("end", "EXPIRED"),
    ]


async def test_end_hooks_for_a_timed_out_run(store: Store, client: Client) -> None:
    handle = await slow_task.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.TIMED_OUT
    assert _of(handle.id) == [
        ("start", None),
        ("failure", "TIMED_OUT"),
        ("complete", "TIMED_OUT"),
        ("end", "TIMED_OUT"),
    ]


async def test_an_end_hook_after_a_timeout_runs_in_a_task_not_left_cancelling(
    store: Store, client: Client
) -> None:
    """A timeout unwinds the attempt by cancelling the asyncio task its code runs in; the
    end hooks run in that task afterwards, and a cancellation left counted there would
    make asyncio's structured helpers (timeout, TaskGroup) in a hook misjudge theirs."""
    CANCELLING.clear()
    handle = await slow_counted_task.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    assert client.retrieve(handle.id).status == RunStatus.TIMED_OUT
    assert CANCELLING == [0]


async def test_end_hooks_for_a_run_lost_with_its_worker(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """The worker holding the last attempt vanished: the reaper fails the run, and a
    live worker serving the task runs its end hooks."""
    handle = await lost_task.trigger({})
    store.register_worker(
        WorkerInfo(id="worker_gone", env="dev", host="elsewhere", pid=1, concurrency=1,
                   tasks=["orch-h-lost"], lease_seconds=5)
    )
    [claim] = store.claim("worker_gone", "dev", {"task/orch-h-lost": ["orch-h-lost"]}, 1)
    assert claim.run.id == handle.id
    clock.advance(6)  # its lease lapses
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error["code"] == "worker_lost"
    assert _of(handle.id) == [
        ("failure", "FAILED"),
        ("complete", "FAILED"),
        ("end", "FAILED"),
    ]


async def test_a_raising_hook_never_changes_the_outcome(
    store: Store, client: Client, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    good = await broken_hooks.trigger({})
    bad = await broken_failure.trigger({})
    worker = _worker(store)
    with caplog.at_level(logging.ERROR, logger="outlast.worker"):
        await worker.run_until_idle()
        assert client.retrieve(good.id).status == RunStatus.WAITING  # on_wait raised
        clock.advance(61)
        await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(good.id)
    assert (run.status, run.output, run.attempt) == (RunStatus.COMPLETED, "fine", 1)
    assert [name for name, _ in _of(good.id)] == [
        "start", "wait", "resume", "success", "complete", "end"
    ]
    failed = client.retrieve(bad.id)
    assert (failed.status, failed.attempt) == (RunStatus.FAILED, 1)
    assert failed.error is not None and failed.error["message"] == "really failed"
    assert [name for name, _ in _of(bad.id)] == ["failure", "end"]
    logged = [r.getMessage() for r in caplog.records]
    assert sum("hook failed" in m for m in logged) == 8
