"""Clients: trigger and inspect runs from app code.

``Client`` is synchronous (Django, Flask, scripts) and ``AsyncClient`` its asyncio twin.
Each holds a transport (``_transport``) and delegates every call to it: the store's, when
the app shares the database, or HTTP's, to an outlast server when ``api_url`` /
``OUTLAST_API_URL`` is set. What stays here is the same whatever the target: options from
keyword arguments, the edge checks of tokens and queues, and the handles a trigger returns.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import _limits, runs
from ._bulk_client import AsyncBulkMethods, BulkMethods
from ._clock import Clock
from ._config import settings
from ._events_client import AsyncEventMethods, EventMethods
from ._http import HttpTransport
from ._schedule_client import AsyncScheduleMethods, ScheduleMethods
from ._store_transport import StoreTransport

# TriggerOptions, prepare_run and prepare_runs are re-exported: apps and the bench import
# them from here.
from ._trigger import NO_OPTIONS as _NO_OPTIONS
from ._trigger import REGISTRY
from ._trigger import TriggerOptions as TriggerOptions
from ._trigger import prepare_run as prepare_run
from ._trigger import prepare_runs as prepare_runs
from ._version_client import AsyncVersionMethods, VersionMethods
from .runs import Run, RunHandle, SyncRunHandle
from .store import open_store
from .store.base import Store, Waitpoint
from .waitpoints import Token

if TYPE_CHECKING:
    from ._transport import AsyncTransport, Transport
    from .tasks import Task

_MISSING: Any = object()


def _seconds(value: timedelta | float | None, field: str = "timeout") -> float | None:
    if value is None:
        return None
    return _limits.seconds(
        value.total_seconds() if isinstance(value, timedelta) else value, field
    )


def _options(options: TriggerOptions | None, kwargs: dict[str, Any]) -> TriggerOptions:
    return options or (TriggerOptions(**kwargs) if kwargs else _NO_OPTIONS)


def _task_id(task: Task[Any, Any] | str) -> str:
    return task if isinstance(task, str) else task.id


def _output_type(task: Task[Any, Any] | str) -> Any:
    local = REGISTRY.get(task) if isinstance(task, str) else task
    return local.return_type if local is not None else Any


def _token_args(
    timeout: timedelta | float | None,
    idempotency_key: str | None = None,
    idempotency_key_ttl: timedelta | float | None = None,
    tags: Sequence[str] = (),
) -> tuple[float | None, str | None, float | None, list[str]]:
    """A token's arguments checked at the edge, whatever the transport."""
    checked_tags = _limits.tags(list(tags))
    if idempotency_key is not None:
        _limits.text(idempotency_key, "idempotency_key")
    return (_seconds(timeout), idempotency_key,
            _seconds(idempotency_key_ttl, "idempotency_key_ttl"), checked_tags)


def _queue_limit(limit: int | None) -> int | None:
    if limit is not None:
        _limits.integer(limit, "limit")
    return limit


def _transport(
    database_url: str | None, store: Store | None, env: str, clock: Clock | None,
    api_url: str | None, secret_key: str | None,
) -> Transport:
    if api_url is None and store is None and database_url is None:
        api_url = os.environ.get("OUTLAST_API_URL") or None
    if api_url:
        key = secret_key or os.environ.get("OUTLAST_SECRET_KEY", "")
        return HttpTransport(api_url, key, env=env)
    return StoreTransport(store or open_store(database_url, clock), env)


class Client(ScheduleMethods, BulkMethods, EventMethods, VersionMethods):
    """Synchronous client: over the database (``database_url``/``store``), or over HTTP to
    an outlast server (``api_url`` + ``secret_key``). With neither given, OUTLAST_API_URL
    and OUTLAST_SECRET_KEY select HTTP, else OUTLAST_DATABASE_URL the database."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        store: Store | None = None,
        env: str | None = None,
        clock: Clock | None = None,
        api_url: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        self.env = env or settings().env
        self._transport = _transport(database_url, store, self.env, clock, api_url, secret_key)

    @property
    def store(self) -> Store:
        return self._transport.store

    @property
    def _http(self) -> HttpTransport | None:
        # The HTTP transport, for tests that swap its session for an in-process app.
        return self._transport if isinstance(self._transport, HttpTransport) else None

    def _ready(self) -> Store:
        """The store, its schema checked (ConfigurationError over HTTP)."""
        self._transport.check()
        return self.store

    def close(self) -> None:
        self._transport.close()

    def _handle(self, task: Task[Any, Any] | str, started: tuple[str, bool], out_type: Any
                ) -> SyncRunHandle[Any]:
        return SyncRunHandle(id=started[0], task_id=_task_id(task), is_cached=started[1],
                             _client=self, _output_type=out_type)

    # -- triggering -----------------------------------------------------------------------
    def trigger(
        self,
        task: Task[Any, Any] | str,
        payload: Any = None,
        *,
        options: TriggerOptions | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> SyncRunHandle[Any]:
        """Start a run; returns once the run is committed (C1). With ``connection`` (the
        app's PostgreSQL connection, see ``_app_tx``), the run is written in the app's open
        transaction instead and commits or rolls back with it."""
        opts = _options(options, kwargs)
        started = (self._transport.trigger(task, payload, opts) if connection is None
                   else self._transport.trigger_in(task, payload, opts, connection))
        return self._handle(task, started, _output_type(task))

    def batch_trigger(
        self,
        task: Task[Any, Any] | str,
        payloads: Iterable[Any],
        *,
        options: TriggerOptions | None = None,
        **kwargs: Any,
    ) -> list[SyncRunHandle[Any]]:
        """Start many runs in one transaction: every payload is validated first, and a bad
        one (named by its index) writes nothing."""
        started = self._transport.batch_trigger(task, payloads, _options(options, kwargs))
        out_type = _output_type(task)
        return [self._handle(task, s, out_type) for s in started]

    # -- runs -----------------------------------------------------------------------------
    def retrieve(self, run_id: str) -> Run:
        return self._transport.retrieve(run_id)

    def list_runs(self, **filters: Any) -> list[Run]:
        return self._transport.list_runs(**filters)

    def cancel(self, run_id: str) -> Run:
        return self._transport.cancel(run_id)

    def replay(self, run_id: str, payload: Any = _MISSING) -> SyncRunHandle[Any]:
        """A new run of the same task with the same (or a new) payload, linked to the
        original by ``replayed_from``."""
        replayed, task_id = self._transport.replay(run_id, payload, payload is not _MISSING)
        return SyncRunHandle(id=replayed, task_id=task_id, _client=self)

    def wait_for_run(self, run_id: str, timeout: float | None = None, poll: float = 0.05) -> Run:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.retrieve(run_id)
            if run.is_final:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            time.sleep(poll)

    # -- waitpoint tokens -----------------------------------------------------------------
    def create_token(
        self,
        timeout: timedelta | float | None = None,
        *,
        idempotency_key: str | None = None,
        idempotency_key_ttl: timedelta | float | None = None,
        tags: Sequence[str] = (),
    ) -> Token:
        return self._transport.create_token(
            *_token_args(timeout, idempotency_key, idempotency_key_ttl, tags)
        )

    def complete_token(self, token_id: str, data: Any = None) -> Waitpoint:
        """Complete a token; the first completion wins, later ones change nothing (C7)."""
        return self._transport.complete_token(token_id, data)

    def get_token(self, token_id: str) -> Waitpoint:
        return self._transport.get_token(token_id)

    def list_tokens(self, status: str | None = None, limit: int = 100) -> list[Waitpoint]:
        return self._transport.list_tokens(status, limit)

    # -- queues ---------------------------------------------------------------------------
    def list_queues(self) -> list[dict[str, Any]]:
        return self._transport.list_queues()

    def pause_queue(self, name: str) -> dict[str, Any]:
        return self._transport.pause_queue(name, True)

    def resume_queue(self, name: str) -> dict[str, Any]:
        return self._transport.pause_queue(name, False)

    def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        return self._transport.set_queue_limit(name, _queue_limit(limit))


class AsyncClient(
    AsyncScheduleMethods, AsyncBulkMethods, AsyncEventMethods, AsyncVersionMethods
):
    """The asyncio twin of ``Client``: the same methods, awaitable, on the async twin of
    the client's transport (an asyncio HTTP session; over the database, the store's calls
    off the loop)."""

    sync: Client

    def __init__(self, client: Client | None = None, **kwargs: Any) -> None:
        self.sync = client or Client(**kwargs)
        self.env = self.sync.env
        self._transport: AsyncTransport = self.sync._transport.asynchronous()

    def _handle(self, task: Task[Any, Any] | str, started: tuple[str, bool], out_type: Any
                ) -> RunHandle[Any]:
        return RunHandle(id=started[0], task_id=_task_id(task), is_cached=started[1],
                         _client=self, _output_type=out_type)

    async def trigger(
        self,
        task: Task[Any, Any] | str,
        payload: Any = None,
        *,
        options: TriggerOptions | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> RunHandle[Any]:
        opts = _options(options, kwargs)
        started = await (self._transport.trigger(task, payload, opts) if connection is None
                         else self._transport.trigger_in(task, payload, opts, connection))
        return self._handle(task, started, _output_type(task))

    async def batch_trigger(
        self,
        task: Task[Any, Any] | str,
        payloads: Iterable[Any],
        *,
        options: TriggerOptions | None = None,
        **kwargs: Any,
    ) -> list[RunHandle[Any]]:
        started = await self._transport.batch_trigger(
            task, list(payloads), _options(options, kwargs)
        )
        out_type = _output_type(task)
        return [self._handle(task, s, out_type) for s in started]

    async def retrieve(self, run_id: str) -> Run:
        return await self._transport.retrieve(run_id)

    async def list_runs(self, **filters: Any) -> list[Run]:
        return await self._transport.list_runs(**filters)

    async def cancel(self, run_id: str) -> Run:
        return await self._transport.cancel(run_id)

    async def replay(self, run_id: str, payload: Any = _MISSING) -> RunHandle[Any]:
        replayed, task_id = await self._transport.replay(run_id, payload,
                                                         payload is not _MISSING)
        return RunHandle(id=replayed, task_id=task_id, _client=self)

    async def wait_for_run(
        self, run_id: str, timeout: float | None = None, poll: float = 0.05
    ) -> Run:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.retrieve(run_id)
            if run.is_final:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            await asyncio.sleep(poll)

    async def create_token(self, timeout: timedelta | float | None = None, **kw: Any) -> Token:
        return await self._transport.create_token(*_token_args(timeout, **kw))

    async def complete_token(self, token_id: str, data: Any = None) -> Waitpoint:
        return await self._transport.complete_token(token_id, data)

    async def get_token(self, token_id: str) -> Waitpoint:
        return await self._transport.get_token(token_id)

    async def list_tokens(self, status: str | None = None, limit: int = 100) -> list[Waitpoint]:
        return await self._transport.list_tokens(status, limit)

    async def close(self) -> None:
        await self._transport.close()
        # The sync client's close may join a database pool's threads: off the loop.
        await asyncio.to_thread(self.sync.close)

    async def list_queues(self) -> list[dict[str, Any]]:
        return await self._transport.list_queues()

    async def pause_queue(self, name: str) -> dict[str, Any]:
        return await self._transport.pause_queue(name, True)

    async def resume_queue(self, name: str) -> dict[str, Any]:
        return await self._transport.pause_queue(name, False)

    async def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        return await self._transport.set_queue_limit(name, _queue_limit(limit))


_defaults: dict[tuple[str, str], AsyncClient] = {}


def default_client() -> Client:
    return default_async_client().sync


def default_async_client() -> AsyncClient:
    """The process-wide client for OUTLAST_DATABASE_URL and OUTLAST_ENV."""
    key = (
        os.environ.get("OUTLAST_API_URL") or os.environ.get("OUTLAST_DATABASE_URL", ""),
        settings().env,
    )
    client = _defaults.get(key)
    if client is None:
        client = _defaults[key] = AsyncClient(Client())
    return client


def set_default_client(client: Client | None) -> None:
    """Make ``client`` the one ``task.trigger()`` uses (None resets); for tests and apps
    that build their own store."""
    _defaults.clear()
    if client is not None:
        key = (
            os.environ.get("OUTLAST_API_URL") or os.environ.get("OUTLAST_DATABASE_URL", ""),
            settings().env,
        )
        _defaults[key] = AsyncClient(client)


# A handle made without a client (a child run's, inside a task) waits through the
# process-wide AsyncClient; runs.py is data and cannot import this module.
runs.set_default_waiter(default_async_client)
