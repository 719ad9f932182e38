"""One client, two transports, on real SQLite and real PostgreSQL: every transport answers
every call of its protocol; ``AsyncClient`` runs on its own async transport (an asyncio
HTTP session, or the store's calls off the loop), never on the sync client in a thread;
the sync client's handles block (``handle.result(timeout=)``)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from outlast import AbortRun, Retry, RunFailedError, Worker, task
from outlast._http import AsyncHttpTransport, HttpTransport
from outlast._store_transport import AsyncStoreTransport, StoreTransport
from outlast._transport import AsyncTransport, Transport
from outlast.client import AsyncClient, Client
from outlast.runs import RunHandle, RunStatus, SyncRunHandle
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store.base import Store


@task(id="ct-double", retry=Retry(max_attempts=1))
async def double(payload: dict[str, Any]) -> int:
    if payload.get("abort"):
        raise AbortRun("asked to fail")
    return int(payload["n"]) * 2


@task(id="ct-unserved")
async def unserved(payload: Any) -> None:
    """No worker in these tests serves it: its runs stay queued."""


# -- the protocols --------------------------------------------------------------------------


def _calls(protocol: type) -> dict[str, Any]:
    return {n: v for n, v in vars(protocol).items() if not n.startswith("_")}


@pytest.mark.parametrize(
    ("implementation", "protocol"),
    [
        (StoreTransport, Transport),
        (HttpTransport, Transport),
        (AsyncStoreTransport, AsyncTransport),
        (AsyncHttpTransport, AsyncTransport),
    ],
)
def test_each_transport_answers_every_call_of_its_protocol(
    implementation: type, protocol: type
) -> None:
    calls = _calls(protocol)
    assert len(calls) == (15 if protocol is AsyncTransport else 30)
    for name, declared in calls.items():
        found = inspect.getattr_static(implementation, name, None)
        assert found is not None, f"{implementation.__name__} lacks {name}"
        if isinstance(declared, property):
            assert isinstance(found, property), name
            continue
        assert inspect.iscoroutinefunction(found) == inspect.iscoroutinefunction(declared), name
        want = list(inspect.signature(declared).parameters)
        assert list(inspect.signature(found).parameters) == want, name


def test_the_async_clients_calls_are_the_sync_clients_calls() -> None:
    """Every public call of Client is on AsyncClient, awaitable, with the same name."""
    sync = {n for n in vars(Client) if not n.startswith("_") and callable(vars(Client)[n])}
    for base in Client.__mro__[1:-1]:
        sync |= {n for n, v in vars(base).items() if not n.startswith("_") and callable(v)}
    for name in sync:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


# -- AsyncClient on its own transport ------------------------------------------------------


def _no_sync_client(client: Client) -> None:
    """Make every call of the sync client (and its HTTP session) fail: an AsyncClient that
    ran the sync client in a thread would hit these."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("AsyncClient called the sync client")

    for name in ("trigger", "batch_trigger", "retrieve", "wait_for_run", "create_token",
                 "get_token", "complete_token", "list_runs", "cancel", "replay"):
        setattr(client, name, refuse)
    if client._http is not None:
        client._http._http = httpx.Client(transport=httpx.MockTransport(refuse))


async def _ticking(ticks: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        ticks.append(1)
        await asyncio.sleep(0)


async def _trigger_get_wait(jobs: AsyncClient, worker: Worker) -> None:
    """Trigger, read and wait through ``jobs`` while a worker on the same loop runs the
    run and another coroutine keeps ticking: nothing here may hold the loop."""
    ticks: list[int] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticking(ticks, stop))
    handle = await jobs.trigger(double, {"n": 21})
    [other] = await jobs.batch_trigger("ct-double", [{"n": 1}])
    assert isinstance(handle, RunHandle) and handle.task_id == "ct-double"
    assert (await jobs.retrieve(handle.id)).status == RunStatus.QUEUED
    waiting = asyncio.create_task(handle.result(timeout=30))
    await asyncio.sleep(0)
    assert not waiting.done()
    await worker.run_until_idle()
    run = await waiting
    assert run.status == RunStatus.COMPLETED and run.output == 42
    assert await other.output(timeout=30) == 2
    assert await handle.output() == 42
    token = await jobs.create_token(60, tags=["t"])
    assert (await jobs.complete_token(token.id, {"ok": True})).status == "completed"
    assert (await jobs.get_token(token.id)).output == {"ok": True}
    stop.set()
    await ticker
    assert len(ticks) > 10  # the ticker ran between the client's awaits


async def test_async_client_over_the_store_does_not_use_the_sync_client(
    store: Store, workers: Callable[..., Worker]
) -> None:
    sync = Client(store=store, env="dev")
    jobs = AsyncClient(sync)
    assert isinstance(jobs._transport, AsyncStoreTransport)
    _no_sync_client(sync)
    await _trigger_get_wait(jobs, workers(double))


@pytest.fixture
async def over_http(store: Store) -> AsyncIterator[AsyncClient]:
    """An AsyncClient over HTTP whose asyncio session reaches the API app in-process."""
    secret = create_key(store, "dev").secret
    jobs = AsyncClient(api_url="http://outlast.test", secret_key=secret, env="dev")
    transport = jobs._transport
    assert isinstance(transport, AsyncHttpTransport)
    transport._sessions[asyncio.get_running_loop()] = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(store, dashboard=False)),
        base_url="http://outlast.test", headers={"Authorization": f"Bearer {secret}"},
    )
    yield jobs
    await jobs.close()


async def test_async_client_over_http_does_not_use_the_sync_client(
    over_http: AsyncClient, workers: Callable[..., Worker]
) -> None:
    _no_sync_client(over_http.sync)
    await _trigger_get_wait(over_http, workers(double))


async def test_an_async_http_client_used_from_a_second_loop_opens_a_session_there() -> None:
    """A process-wide client outlives an ``asyncio.run``: another loop gets its own
    session instead of connections bound to a loop that may be closed."""
    transport = AsyncHttpTransport("http://outlast.test", "tr_dev_x")
    first = transport._client()
    assert transport._client() is first

    def other_loop() -> httpx.AsyncClient:
        async def get() -> httpx.AsyncClient:
            return transport._client()

        return asyncio.run(get())

    second = await asyncio.to_thread(other_loop)
    assert second is not first
    assert transport._client() is first  # back on this loop: its own session
    await transport.close()
    assert first.is_closed and not transport._sessions.get(asyncio.get_running_loop())


# -- the sync client's blocking handles ----------------------------------------------------


async def test_sync_handle_result_blocks_until_the_run_is_final(
    client: Client, workers: Callable[..., Worker]
) -> None:
    ok = client.trigger(double, {"n": 5})
    bad = client.trigger("ct-double", {"n": 0, "abort": True})
    assert isinstance(ok, SyncRunHandle) and ok.task_id == "ct-double"
    assert ok.retrieve().status == RunStatus.QUEUED
    # The blocking calls run in a thread, as a Django view would run them, while the
    # worker executes the runs on this loop.
    done, _ = await asyncio.gather(
        asyncio.to_thread(ok.result, 30), workers(double).run_until_idle()
    )
    assert done.status == RunStatus.COMPLETED and done.output == 10
    assert ok.output(timeout=1) == 10
    failed = bad.result(timeout=1)
    assert failed.status == RunStatus.FAILED
    with pytest.raises(RunFailedError, match=f"run {bad.id} ended FAILED: asked to fail"):
        bad.output(timeout=1)


def test_sync_handle_result_raises_past_its_timeout(client: Client) -> None:
    handle = client.trigger(unserved, None)
    with pytest.raises(TimeoutError, match=f"run {handle.id} is still QUEUED"):
        handle.result(timeout=0.05, poll=0.01)


def test_sync_batch_and_replay_handles_block_too(client: Client) -> None:
    [handle] = client.batch_trigger(unserved, [None])
    replayed = client.replay(handle.id)
    for h in (handle, replayed):
        assert isinstance(h, SyncRunHandle)
        with pytest.raises(TimeoutError):
            h.result(timeout=0.01, poll=0.01)
    assert replayed.retrieve().replayed_from == handle.id
