"""What the framework integrations share: one client per app, an optional worker in the
app's process, and the dashboard served under one of the app's paths."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ..client import Client, set_default_client
from ..tasks import REGISTRY, Task
from ._mount import Auth, embedded_app

log = logging.getLogger(__name__)


def served_tasks(
    tasks: Iterable[Task[Any, Any]] | Mapping[str, Task[Any, Any]] | None,
) -> Mapping[str, Task[Any, Any]]:
    if tasks is None:
        return REGISTRY
    if isinstance(tasks, Mapping):
        return dict(tasks)
    return {t.id: t for t in tasks}


def open_client(
    database_url: str | None, api_url: str | None, secret_key: str | None, env: str | None,
    *, migrate: bool = False,
) -> Client:
    """The app's client, made the default one (``task.trigger()`` uses it)."""
    client = Client(database_url, api_url=api_url, secret_key=secret_key, env=env)
    if migrate:
        client.store.migrate()
    set_default_client(client)
    return client


class EmbeddedWorker:
    """A worker in the app's event loop, for deployments small enough to need no worker
    process of their own. Stopped gracefully with the app."""

    def __init__(self, client: Client, tasks: Mapping[str, Task[Any, Any]], concurrency: int
                 ) -> None:
        from ..worker import Worker

        self.worker = Worker(client.store, tasks=tasks, env=client.env, concurrency=concurrency)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        self.worker.store.wake_local()  # a worker waiting for work sees the stop at once
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class LazyDashboard:
    """The embedded API and dashboard, built on the first request (the client that
    holds the store opens with the app, after the routes were declared)."""

    def __init__(self, client: Any, prefix: str, auth: Auth | None) -> None:
        self._client = client  # a callable giving the app's Client once it is open
        self.prefix = prefix
        self.auth = auth
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if self._app is None:
            client: Client = self._client()
            self._app = embedded_app(client.store, self.prefix, self.auth)
        await self._app(scope, receive, send)
