"""Clients: trigger and inspect runs from app code.

``Client`` is synchronous (Django, Flask, scripts) and ``AsyncClient`` its asyncio twin.
Both talk to the store directly (the app shares the database), or over HTTP to an
outlast server when ``api_url`` / ``OUTLAST_API_URL`` is set.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from . import _limits, _serde
from ._bulk_client import AsyncBulkMethods, BulkMethods
from ._clock import Clock
from ._config import settings
from ._errors import ConfigurationError, RunNotFound, ValidationError
from ._http import HttpTransport, HttpTrigger
from ._ids import new_id
from ._schedule_client import AsyncScheduleMethods, ScheduleMethods

# TriggerOptions, prepare_run and prepare_runs are re-exported: apps and the bench import
# them from here.
from ._trigger import NO_OPTIONS as _NO_OPTIONS
from ._trigger import REGISTRY, check_options, item_error, prepare_replay
from ._trigger import TriggerOptions as TriggerOptions
from ._trigger import prepare_run as prepare_run
from ._trigger import prepare_runs as prepare_runs
from ._version_client import AsyncVersionMethods, VersionMethods
from .durable import Token
from .runs import Run, RunHandle
from .store import open_store
from .store.base import NewRun, Store, Waitpoint
from .tasks import Task

_MISSING: Any = object()


def _seconds(value: timedelta | float | None, field: str = "timeout") -> float | None:
    if value is None:
        return None
    return _limits.seconds(
        value.total_seconds() if isinstance(value, timedelta) else value, field
    )


class Client(ScheduleMethods, BulkMethods, VersionMethods):
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
        if api_url is None and store is None and database_url is None:
            api_url = os.environ.get("OUTLAST_API_URL") or None
        self._http: HttpTransport | None = None
        self._store: Store | None = None
        if api_url:
            key = secret_key or os.environ.get("OUTLAST_SECRET_KEY", "")
            self._http = HttpTransport(api_url, key)
        else:
            self._store = store or open_store(database_url, clock)
        self.env = env or settings().env
        self._checked = False

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ConfigurationError("this client talks HTTP; it has no database store")
        return self._store

    def _ready(self) -> Store:
        if not self._checked:
            self.store.check_schema()
            self._checked = True
        return self.store

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        else:
            self.store.close()

    # -- triggering -----------------------------------------------------------------------
    def _new_run(
        self, task: Task[Any, Any] | str, payload: Any, options: TriggerOptions
    ) -> NewRun | HttpTrigger:
        if self._http is None:
            return prepare_run(self._ready(), self.env, task, payload, options)
        local = task if isinstance(task, Task) else REGISTRY.get(task)
        task_id = local.id if local is not None else str(task)
        # Fail fast on what can be checked here (the payload, when the task's code is
        # imported; the options). The server validates again and applies the task's
        # defaults, which an app that never imported the task does not know.
        text = local.validate_payload(payload) if local is not None else _serde.to_json(payload)
        check_options(options, self.env)
        return HttpTrigger(task_id, text, options)

    def _send(self, runs: Sequence[NewRun | HttpTrigger]) -> list[tuple[str, bool]]:
        if self._http is not None:
            return self._http.trigger([r for r in runs if isinstance(r, HttpTrigger)])
        new = [r for r in runs if isinstance(r, NewRun)]
        return [(r.id, r.is_cached) for r in self._ready().trigger(new)]

    def trigger(
        self,
        task: Task[Any, Any] | str,
        payload: Any = None,
        *,
        options: TriggerOptions | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> RunHandle[Any]:
        """Start a run; returns once the run is committed (C1). With ``connection`` (the
        app's PostgreSQL connection, see ``_app_tx``), the run is written in the app's open
        transaction instead and commits or rolls back with it."""
        opts = options or (TriggerOptions(**kwargs) if kwargs else _NO_OPTIONS)
        if connection is not None:
            from ._app_tx import trigger_in

            return trigger_in(self, task, payload, opts, connection)
        if self._http is None:
            # The store's path without _new_run and _send's batch plumbing: apps trigger
            # one run at a time, in a loop, and wait for each commit.
            store = self._ready()
            run = prepare_run(store, self.env, task, payload, opts)
            result = store.trigger([run])[0]
            return RunHandle(id=result.id, task_id=run.task_id, is_cached=result.is_cached,
                             _output_type=_output_type(task))
        new = self._new_run(task, payload, opts)
        run_id, cached = self._send([new])[0]
        return RunHandle(id=run_id, task_id=new.task_id, is_cached=cached,
                         _output_type=_output_type(task))

    def batch_trigger(
        self,
        task: Task[Any, Any] | str,
        payloads: Iterable[Any],
        *,
        options: TriggerOptions | None = None,
        **kwargs: Any,
    ) -> list[RunHandle[Any]]:
        """Start many runs in one transaction: every payload is validated first, and a bad
        one (named by its index) writes nothing."""
        opts = options or (TriggerOptions(**kwargs) if kwargs else _NO_OPTIONS)
        runs: Sequence[NewRun | HttpTrigger]
        if self._http is None:
            runs = prepare_runs(self._ready(), self.env, task, payloads, opts)
        else:
            triggers = []
            for i, p in enumerate(payloads):
                try:
                    triggers.append(self._new_run(task, p, opts))
                except ValidationError as exc:
                    raise item_error(exc, i) from None
            runs = triggers
        results = self._send(runs)
        out_type = _output_type(task)
        return [
            RunHandle(id=run_id, task_id=n.task_id, is_cached=cached, _output_type=out_type)
            for (run_id, cached), n in zip(results, runs, strict=True)
        ]

    # -- runs -----------------------------------------------------------------------------
    def retrieve(self, run_id: str) -> Run:
        if self._http is not None:
            return self._http.retrieve(run_id)
        run = self._ready().get_run(self.env, run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} in environment {self.env!r}", field="run_id")
        return run

    def list_runs(self, **filters: Any) -> list[Run]:
        if self._http is not None:
            return self._http.list_runs(**filters)
        return self._ready().list_runs(self.env, **filters)

    def cancel(self, run_id: str) -> Run:
        if self._http is not None:
            return self._http.cancel(run_id)
        run, _ = self._ready().cancel(self.env, run_id)
        return run

    def replay(self, run_id: str, payload: Any = _MISSING) -> RunHandle[Any]:
        """A new run of the same task with the same (or a new) payload, linked to the
        original by ``replayed_from``."""
        if self._http is not None:
            replayed, task_id = self._http.replay(run_id, payload, payload is not _MISSING)
            return RunHandle(id=replayed, task_id=task_id)
        original = self.retrieve(run_id)
        new = prepare_replay(
            self._ready(), self.env, original,
            original.payload if payload is _MISSING else payload,
        )
        result = self._ready().trigger([new])[0]
        return RunHandle(id=result.id, task_id=new.task_id)

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
        from .waitpoints import callback_url

        tags = _limits.tags(list(tags))
        if idempotency_key is not None:
            _limits.text(idempotency_key, "idempotency_key")
        seconds = _seconds(timeout)
        if self._http is not None:
            return self._http.create_token(
                seconds, idempotency_key, _seconds(idempotency_key_ttl, "idempotency_key_ttl"), tags
            )
        store = self._ready()
        wp = store.create_token(
            self.env,
            new_id("waitpoint"),
            timeout_at=store.now() + seconds if seconds is not None else None,
            idempotency_key=idempotency_key,
            idempotency_ttl=_seconds(idempotency_key_ttl, "idempotency_key_ttl"),
            tags=tags,
        )
        return Token(id=wp.id, callback_url=callback_url(store, wp.id), timeout_at=wp.timeout_at)

    def complete_token(self, token_id: str, data: Any = None) -> Waitpoint:
        """Complete a token; the first completion wins, later ones change nothing (C7)."""
        if self._http is not None:
            return self._http.complete_token(token_id, data)
        wp, _ = self._ready().complete_waitpoint(self.env, token_id, _serde.to_json(data))
        return wp

    def get_token(self, token_id: str) -> Waitpoint:
        from ._errors import TokenNotFound

        if self._http is not None:
            return self._http.get_token(token_id)
        wp = self._ready().get_waitpoint(self.env, token_id)
        if wp is None:
            raise TokenNotFound(f"no waitpoint token {token_id!r}", field="id")
        return wp

    def list_tokens(self, status: str | None = None, limit: int = 100) -> list[Waitpoint]:
        if self._http is not None:
            return self._http.list_tokens(status, limit)
        return [
            w
            for w in self._ready().list_waitpoints(self.env, status=status, limit=limit)
            if w.kind == "token"
        ]

    # -- queues ---------------------------------------------------------------------------
    def list_queues(self) -> list[dict[str, Any]]:
        if self._http is not None:
            return self._http.list_queues()
        return [dict(q) for q in self._ready().list_queues(self.env)]

    def pause_queue(self, name: str) -> dict[str, Any]:
        if self._http is not None:
            return self._http.pause_queue(name, True)
        return dict(self._ready().update_queue(self.env, name, paused=True))

    def resume_queue(self, name: str) -> dict[str, Any]:
        if self._http is not None:
            return self._http.pause_queue(name, False)
        return dict(self._ready().update_queue(self.env, name, paused=False))

    def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        if limit is not None:
            _limits.integer(limit, "limit")
        if self._http is not None:
            return self._http.set_queue_limit(name, limit)
        return dict(self._ready().update_queue(self.env, name, concurrency_limit=limit))


def _output_type(task: Task[Any, Any] | str) -> Any:
    if isinstance(task, Task):
        return task.return_type
    local = REGISTRY.get(task)
    return local.return_type if local is not None else Any


class AsyncClient(AsyncScheduleMethods, AsyncBulkMethods, AsyncVersionMethods):
    """The asyncio twin of ``Client``: the same methods, awaitable."""

    def __init__(self, client: Client | None = None, **kwargs: Any) -> None:
        self.sync = client or Client(**kwargs)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    async def trigger(
        self, task: Task[Any, Any] | str, payload: Any = None, **kw: Any
    ) -> RunHandle[Any]:
        handle: RunHandle[Any] = await self._call("trigger", task, payload, **kw)
        handle._client = self
        return handle

    async def batch_trigger(
        self, task: Task[Any, Any] | str, payloads: Iterable[Any], **kw: Any
    ) -> list[RunHandle[Any]]:
        handles: list[RunHandle[Any]] = await self._call(
            "batch_trigger", task, list(payloads), **kw
        )
        for h in handles:
            h._client = self
        return handles

    async def retrieve(self, run_id: str) -> Run:
        run: Run = await self._call("retrieve", run_id)
        return run

    async def list_runs(self, **filters: Any) -> list[Run]:
        runs: list[Run] = await self._call("list_runs", **filters)
        return runs

    async def cancel(self, run_id: str) -> Run:
        run: Run = await self._call("cancel", run_id)
        return run

    async def replay(self, run_id: str, payload: Any = _MISSING) -> RunHandle[Any]:
        handle: RunHandle[Any] = await self._call("replay", run_id, payload)
        handle._client = self
        return handle

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
        token: Token = await self._call("create_token", timeout, **kw)
        return token

    async def complete_token(self, token_id: str, data: Any = None) -> Waitpoint:
        wp: Waitpoint = await self._call("complete_token", token_id, data)
        return wp

    async def get_token(self, token_id: str) -> Waitpoint:
        wp: Waitpoint = await self._call("get_token", token_id)
        return wp

    async def list_tokens(self, status: str | None = None, limit: int = 100) -> list[Waitpoint]:
        wps: list[Waitpoint] = await self._call("list_tokens", status, limit)
        return wps

    async def close(self) -> None:
        await self._call("close")

    async def list_queues(self) -> list[dict[str, Any]]:
        queues: list[dict[str, Any]] = await self._call("list_queues")
        return queues

    async def pause_queue(self, name: str) -> dict[str, Any]:
        q: dict[str, Any] = await self._call("pause_queue", name)
        return q

    async def resume_queue(self, name: str) -> dict[str, Any]:
        q: dict[str, Any] = await self._call("resume_queue", name)
        return q

    async def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        q: dict[str, Any] = await self._call("set_queue_limit", name, limit)
        return q


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
