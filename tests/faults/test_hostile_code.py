"""Task code cannot escape its run's outcome (issue 16, defects 4 and 6).

Hostile code, of tests/apps/hostile_app.py: a ``CancelledError`` the platform did not
cause, a cancelled future, ``KeyboardInterrupt``/``SystemExit``/``GeneratorExit``/a custom
``BaseException``, an exception whose ``str()`` and ``repr()`` raise; from an async task, a
sync task, a step body (async and sync) and a sync task's step. Each ends the attempt as a
failure with a readable error, retried per the task's policy, and the worker goes on
serving. A cancellation the platform did cause keeps its meaning whatever the code turns
it into. Then ``max_duration`` against code that does not yield: an async task holding the
event loop on the CPU, a sync task looping in pure Python, a sync task blocked in C.

Every test ends with the liveness invariant (tests/faults/invariant.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from outlast import Worker
from outlast.client import Client, set_default_client
from outlast.runs import Run, RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from outlast.tasks import Task
from tests.apps import hostile_app as app
from tests.conftest import spawn_worker
from tests.faults.invariant import check_liveness

CASES = [
    (t, kind)
    for t in (
        app.hostile_async,
        app.hostile_sync,
        app.hostile_step,
        app.hostile_step_sync,
        app.hostile_sync_step,
    )
    for kind in app.KINDS
    if kind not in app.ASYNC_ONLY or t in (app.hostile_async, app.hostile_step)
]


@pytest.fixture
def live(db_url: str) -> Iterator[Client]:
    """A client on the real clock, for tests whose limits are real time."""
    client = Client(store=open_store(db_url), env="dev")
    set_default_client(client)
    yield client
    set_default_client(None)
    client.close()


def _attempt_failures(store: Store, run_id: str) -> int:
    return sum(1 for e in store.events(run_id) if e.kind == "attempt_failed")


def _assert_readable_failure(run: Run, kind: str) -> None:
    assert run.status == RunStatus.FAILED, (run.status, run.error)
    assert run.error is not None
    assert run.error["code"] == "task_error"
    assert run.error["type"] == app.TYPE_OF[kind]
    assert app.TYPE_OF[kind] in run.error["message"]
    assert isinstance(run.error["traceback"], str) and run.error["traceback"]


async def _until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("hostile", "kind"), CASES, ids=[f"{t.id}-{k}" for t, k in CASES])
async def test_hostile_code_fails_the_attempt_and_the_worker_goes_on(
    hostile: Task[Any, Any],
    kind: str,
    store: Store,
    client: Client,
    db_url: str,
    workers: Callable[..., Worker],
) -> None:
    bad = await hostile.trigger({"kind": kind})
    good = await app.ok.trigger({"n": 1})
    worker = workers(hostile, app.ok)
    await worker.run_until_idle(max_seconds=30)

    run = client.retrieve(bad.id)
    _assert_readable_failure(run, kind)
    assert run.attempt == 2  # retried per its policy, like any failure
    assert _attempt_failures(store, bad.id) == 2
    assert client.retrieve(good.id).status == RunStatus.COMPLETED
    assert not worker.active and worker._busy() == 0  # no slot held by it

    # The same worker serves the next run.
    after = await app.ok.trigger({"n": 2})
    await worker.run_until_idle(max_seconds=30)
    assert client.retrieve(after.id).status == RunStatus.COMPLETED
    check_liveness(db_url)


async def test_hooks_raising_keyboard_interrupt_and_system_exit_change_nothing(
    store: Store, client: Client, db_url: str, workers: Callable[..., Worker]
) -> None:
    app.HOOKS_CALLED.clear()
    handle = await app.hostile_hooks.trigger({})
    worker = workers(app.hostile_hooks, app.ok)
    await worker.run_until_idle(max_seconds=30)
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED and run.output == "done", (run.status, run.error)
    assert app.HOOKS_CALLED == ["start", "end"]
    after = await app.ok.trigger({"n": 1})
    await worker.run_until_idle(max_seconds=30)
    assert client.retrieve(after.id).status == RunStatus.COMPLETED
    check_liveness(db_url)


@pytest.mark.parametrize("then", ["keyboard_interrupt", "unprintable", "cancelled_error", "return"])
async def test_a_cancel_keeps_its_meaning_whatever_the_code_turns_it_into(
    then: str, store: Store, client: Client, db_url: str
) -> None:
    """The code catches the platform's cancellation, then raises something hostile or
    returns a value: the run ends CANCELED, the worker survives and serves the next."""
    handle = await app.swallow_cancel.trigger({"then": then})
    worker = Worker(
        store,
        tasks={t.id: t for t in (app.swallow_cancel, app.ok)},
        env="dev",
        heartbeat_interval=0.02,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: handle.id in worker.active, 30, "the run started")
        client.cancel(handle.id)
        await _until(lambda: client.retrieve(handle.id).is_final, 30, "the run ended")
        good = await app.ok.trigger({"n": 1})
        await _until(lambda: client.retrieve(good.id).is_final, 30, "the next run ended")
    finally:
        stop.set()
        await running
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.CANCELED, (run.status, run.error)
    assert client.retrieve(good.id).status == RunStatus.COMPLETED
    check_liveness(db_url)


# -- max_duration against code that does not yield --------------------------------------


async def test_a_cpu_bound_async_task_is_timed_out_by_the_watchdog(
    live: Client, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An async task spinning on the CPU for 20 s with a 1 s max_duration: the loop watchdog
    interrupts it, the run ends TIMED_OUT (not COMPLETED 20 s later), a warning names it,
    and the worker runs the next run."""
    caplog.set_level(logging.WARNING, logger="outlast")
    handle = await app.spin.trigger({"seconds": 20})
    worker = Worker(live.store, tasks={t.id: t for t in (app.spin, app.ok)}, env="dev")
    stop = asyncio.Event()
    began = time.monotonic()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: live.retrieve(handle.id).is_final, 25, "the spinning run ended")
        took = time.monotonic() - began
        good = await app.ok.trigger({"n": 1})
        await _until(lambda: live.retrieve(good.id).is_final, 30, "the next run ended")
    finally:
        stop.set()
        await running
    run = live.retrieve(handle.id)
    assert run.status == RunStatus.TIMED_OUT, (run.status, run.output, took)
    assert run.error is not None and run.error["code"] == "max_duration_exceeded"
    assert took < 15, took  # far before the 20 s the code would have spun
    assert live.retrieve(good.id).status == RunStatus.COMPLETED
    blocked = [r for r in caplog.records if "event loop" in r.getMessage()]
    assert any(handle.id in r.getMessage() for r in blocked), [r.getMessage() for r in blocked]
    print(f"cpu-bound async run with max_duration 1 s ended TIMED_OUT after {took:.2f} s")
    check_liveness(db_url)


def _threads_of(run_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if run_id in t.name]


async def test_a_sync_task_looping_past_max_duration_is_stopped(live: Client, db_url: str) -> None:
    """A sync task looping in pure Python for 30 s with a 1 s max_duration: TIMED_OUT, and
    its thread is stopped (an asynchronous exception), not left spinning."""
    handle = await app.sync_spin.trigger({"seconds": 30})
    worker = Worker(live.store, tasks={app.sync_spin.id: app.sync_spin}, env="dev")
    stop = asyncio.Event()
    began = time.monotonic()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: live.retrieve(handle.id).is_final, 25, "the run ended")
        ended = time.monotonic() - began
        await _until(lambda: handle.id in app.SPUN_UNTIL, 10, "the run's code stopped")
        stopped = app.SPUN_UNTIL[handle.id] - began
        assert not _threads_of(handle.id)
        await _until(lambda: worker._busy() == 0, 5, "its slot freed")
    finally:
        stop.set()
        await running
    run = live.retrieve(handle.id)
    assert run.status == RunStatus.TIMED_OUT, (run.status, run.error)
    assert stopped < 15, stopped
    print(f"sync spin: TIMED_OUT after {ended:.2f} s, thread stopped after {stopped:.2f} s")
    check_liveness(db_url)


async def test_a_cancelled_sync_task_is_stopped(store: Store, client: Client, db_url: str) -> None:
    """A cancel of a sync task looping in pure Python: CANCELED, and its loop stops (it
    never read ``cancel_requested``)."""
    handle = await app.sync_spin.trigger({"seconds": 30}, max_duration=600)
    worker = Worker(
        store, tasks={app.sync_spin.id: app.sync_spin}, env="dev", heartbeat_interval=0.02
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: handle.id in worker.active, 30, "the run started")
        client.cancel(handle.id)
        await _until(lambda: client.retrieve(handle.id).is_final, 30, "the run ended")
        await _until(lambda: handle.id in app.SPUN_UNTIL, 10, "the run's code stopped")
    finally:
        stop.set()
        await running
    assert client.retrieve(handle.id).status == RunStatus.CANCELED
    check_liveness(db_url)


async def test_a_sync_task_blocked_in_c_keeps_its_slot_until_it_returns(
    live: Client, db_url: str
) -> None:
    """A sync task blocked in a C call past its 0.5 s max_duration is reported TIMED_OUT
    at once, but its thread still runs: the worker (concurrency 1) does not count its slot
    free, so the next run waits until that thread returns."""
    app.GATE.clear()
    blocked = await app.sync_blocked.trigger({"seconds": 60})
    worker = Worker(
        live.store,
        tasks={t.id: t for t in (app.sync_blocked, app.ok)},
        env="dev",
        concurrency=1,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: live.retrieve(blocked.id).is_final, 25, "the blocked run ended")
        assert live.retrieve(blocked.id).status == RunStatus.TIMED_OUT
        good = await app.ok.trigger({"n": 1})
        await asyncio.sleep(1.0)  # time the worker would need to start it in a free slot
        assert worker._busy() == 1, "the blocked thread's slot was counted free"
        assert live.retrieve(good.id).status == RunStatus.QUEUED
        app.GATE.set()
        await _until(lambda: live.retrieve(good.id).is_final, 30, "the next run ended")
    finally:
        app.GATE.set()
        stop.set()
        await running
    assert live.retrieve(good.id).status == RunStatus.COMPLETED
    check_liveness(db_url)


# -- a real worker process ------------------------------------------------------------------


async def test_a_worker_process_survives_hostile_code_and_cancels_it(
    live: Client, db_url: str
) -> None:
    """`outlast worker` runs tasks raising KeyboardInterrupt, SystemExit (also from an
    asyncio task their code spawned, which asyncio lets out of the loop) and an
    unprintable exception: each ends FAILED with a readable error, the process lives on
    and completes other runs, and a cancel of a run whose code fights it works."""
    bad = {
        kind: await app.hostile_async.trigger({"kind": kind})
        for kind in ("keyboard_interrupt", "system_exit", "unprintable", "cancelled_error")
    }
    sync_bad = await app.hostile_sync.trigger({"kind": "keyboard_interrupt"})
    spawned = {
        kind: await app.hostile_gather.trigger({"kind": kind})
        for kind in ("keyboard_interrupt", "system_exit")
    }
    swallow = await app.swallow_cancel.trigger({"then": "keyboard_interrupt"})
    spinning = await app.spin.trigger({"seconds": 20})  # the watchdog, on the CLI's uvloop
    proc = spawn_worker(db_url, "tests.apps.hostile_app", concurrency=4)
    try:
        for kind, handle in bad.items():
            run = await asyncio.to_thread(live.wait_for_run, handle.id, 60)
            _assert_readable_failure(run, kind)
        _assert_readable_failure(
            await asyncio.to_thread(live.wait_for_run, sync_bad.id, 60), "keyboard_interrupt"
        )
        for kind, handle in spawned.items():
            run = await asyncio.to_thread(live.wait_for_run, handle.id, 60)
            _assert_readable_failure(run, kind)
        assert proc.poll() is None, "the worker process died"
        spun = await asyncio.to_thread(live.wait_for_run, spinning.id, 15)
        assert spun.status == RunStatus.TIMED_OUT, (spun.status, spun.error)
        good = [await app.ok.trigger({"n": i}) for i in range(5)]
        for h in good:
            done = await asyncio.to_thread(live.wait_for_run, h.id, 60)
            assert done.status == RunStatus.COMPLETED
        await _until(
            lambda: live.retrieve(swallow.id).status == RunStatus.EXECUTING, 30, "swallow started"
        )
        live.cancel(swallow.id)
        run = await asyncio.to_thread(live.wait_for_run, swallow.id, 60)
        assert run.status == RunStatus.CANCELED, (run.status, run.error)
        assert proc.poll() is None, "the worker process died"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except Exception:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    check_liveness(db_url)
