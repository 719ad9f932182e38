"""An idle worker's wake-ups are read on its event loop (outlast/_wakeups.py): a trigger
committed elsewhere wakes the loop through the store's file descriptor (PostgreSQL's
LISTEN connection, SQLite's datagram socket), with no thread blocked in
``wait_for_work``. The poll interval here is an hour, so only a wake-up can start a run;
the deadlines are generous bounds on conditions, not timings. SQLite databases go in a
short directory: a wake-up socket's path is limited to about 100 bytes, and under a
longer one (pytest-xdist's tmp_path) SQLite has no descriptor to give."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from outlast import task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from outlast.tasks import Task
from outlast.worker import Worker


@task(id="wake-loop")
async def wake_loop(payload: int) -> int:
    return payload * 2


async def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@task(id="wake-other")
async def wake_other(payload: int) -> int:
    return payload * 2


@contextlib.asynccontextmanager
async def waiting(store: Store, *tasks: Task[Any, Any]) -> AsyncIterator[Worker]:
    """A running worker, waiting for work on its loop."""
    worker = Worker(store, tasks={t.id: t for t in tasks}, env="dev", poll_interval=3600.0,
                    scheduler=False)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await until(lambda: worker._wakeups.watching and worker._waiter is not None
                and not worker._waiter.done(), "the worker never waited for work")
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)  # shutdown lets the loop's wait go at once


@pytest.fixture
def no_thread(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread waiting in ``wait_for_work`` fails the test."""

    def refuse(timeout: float) -> None:
        raise AssertionError("a thread waited in wait_for_work")

    monkeypatch.setattr(store, "wait_for_work", refuse)


@pytest.fixture
async def idle(store: Store, no_thread: None) -> AsyncIterator[Worker]:
    async with waiting(store, wake_loop) as worker:
        yield worker


def other_client(db_url: str, clock: FakeClock) -> Client:
    """A client on a store of its own: its connections are not the worker's."""
    return Client(store=open_store(db_url, clock), env="dev")


async def finished(client: Client, task_: Task[Any, Any], payload: int) -> None:
    handle = client.trigger(task_, payload)
    await until(lambda: client.retrieve(handle.id).is_final, "no wake-up started the run")
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED and run.output == payload * 2


async def test_a_trigger_elsewhere_wakes_the_loop_without_a_thread(
    idle: Worker, db_url: str, clock: FakeClock
) -> None:
    client = other_client(db_url, clock)
    try:
        for payload in (1, 2, 3):  # and it keeps watching after each
            await finished(client, wake_loop, payload)
            assert idle._wakeups.watching
    finally:
        client._transport._store.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_lost_listen_connection_is_replaced_and_wakes_again(
    idle: Worker, store: Store, db_url: str, clock: FakeClock
) -> None:
    listener: Any = store._listener  # type: ignore[attr-defined]
    lost = listener.info.backend_pid
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (lost,))
    # The loop sees the socket close, claims (a lost wake-up may hide behind the loss),
    # and listens again on a new connection.
    await until(lambda: idle._wakeups.watching and store._listener is not None  # type: ignore[attr-defined]
                and store._listener.info.backend_pid != lost,  # type: ignore[attr-defined]
                "the LISTEN connection was not replaced")
    client = other_client(db_url, clock)
    try:
        await finished(client, wake_loop, 4)
    finally:
        client._transport._store.close()  # type: ignore[attr-defined]


async def test_workers_sharing_a_store_are_each_woken(
    store: Store, no_thread: None, db_url: str, clock: FakeClock
) -> None:
    # One watch on the store's descriptor wakes both (a second add_reader on the same
    # descriptor would replace the first worker's).
    client = other_client(db_url, clock)
    try:
        async with waiting(store, wake_loop), waiting(store, wake_other):
            await finished(client, wake_loop, 5)
            await finished(client, wake_other, 6)
    finally:
        client._transport._store.close()  # type: ignore[attr-defined]


async def test_a_store_with_no_descriptor_is_waited_on_in_a_thread(
    store: Store, db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Behind a pooler with no direct URL, or with the database away, the store has no
    # descriptor to give: a thread waits in wait_for_work, woken as before.
    waited: list[float] = []
    real = store.wait_for_work

    def counted(timeout: float) -> None:
        waited.append(timeout)
        real(timeout)

    monkeypatch.setattr(store, "wakeup_fd", lambda: None)
    monkeypatch.setattr(store, "wait_for_work", counted)
    worker = Worker(store, tasks={wake_loop.id: wake_loop}, env="dev", poll_interval=3600.0,
                    scheduler=False)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    client = other_client(db_url, clock)
    try:
        await until(lambda: bool(waited), "no thread waited for work")
        assert not worker._wakeups.watching
        await finished(client, wake_loop, 7)
    finally:
        stop.set()
        store.wake_local()  # the thread's wait ends; shutdown waits for it
        client.trigger(wake_loop, 0)  # and on PostgreSQL a NOTIFY ends it
        await asyncio.wait_for(running, 60)
        client._transport._store.close()  # type: ignore[attr-defined]
