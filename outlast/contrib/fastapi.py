"""outlast in a FastAPI app: the client opened with the app, a dependency for handlers,
an optional worker in the app's process, the API and dashboard under one of its paths.

::

    from outlast.contrib.fastapi import Outlast, OutlastClient

    outlast = Outlast(worker=True)           # OUTLAST_DATABASE_URL, or database_url=…
    app = FastAPI(lifespan=outlast.lifespan)
    outlast.mount(app, "/outlast", auth=require_admin)   # optional

    @app.post("/signup")
    async def create(body: Signup, client: OutlastClient) -> dict[str, str]:
        handle = await client.trigger(signup, body)
        return {"run_id": handle.id}
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from .._errors import ConfigurationError
from ..client import AsyncClient, set_default_client
from ..tasks import Task
from ._embedded import EmbeddedWorker, LazyDashboard, open_client, served_tasks
from ._mount import Auth


class Outlast:
    """The app's outlast: pass ``lifespan`` to ``FastAPI(lifespan=…)`` (or enter
    ``outlast.lifespan(app)`` from your own lifespan)."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        api_url: str | None = None,
        secret_key: str | None = None,
        env: str | None = None,
        worker: bool = False,
        tasks: Iterable[Task[Any, Any]] | Mapping[str, Task[Any, Any]] | None = None,
        concurrency: int = 10,
        migrate: bool = False,
    ) -> None:
        if worker and api_url:
            raise ConfigurationError(
                "an embedded worker needs the database (database_url=), not the HTTP API",
                field="worker",
            )
        self.database_url = database_url
        self.api_url = api_url
        self.secret_key = secret_key
        self.env = env
        self.run_worker = worker
        self.tasks = tasks
        self.concurrency = concurrency
        self.migrate = migrate
        self._client: AsyncClient | None = None
        self.worker: EmbeddedWorker | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise ConfigurationError(
                "outlast is not open: pass FastAPI(lifespan=outlast.lifespan)", field="lifespan"
            )
        return self._client

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        sync = open_client(self.database_url, self.api_url, self.secret_key, self.env,
                           migrate=self.migrate)
        self._client = AsyncClient(sync)
        app.state.outlast = self
        if self.run_worker:
            self.worker = EmbeddedWorker(sync, served_tasks(self.tasks), self.concurrency)
            self.worker.start()
        try:
            yield
        finally:
            if self.worker is not None:
                await self.worker.stop()
                self.worker = None
            set_default_client(None)
            sync.close()
            self._client = None

    def mount(self, app: FastAPI, path: str = "/outlast", *, auth: Auth | None = None) -> None:
        """Serve the dashboard (and the API, which keeps its secret keys) at ``path``,
        behind ``auth(request)``: return True to let the request in, False (403) or raise
        an HTTPException. Without ``auth`` anyone who reaches the app reaches them."""
        path = "/" + path.strip("/")
        app.mount(path, LazyDashboard(lambda: self.client.sync, path, auth))


def get_client(request: Request) -> AsyncClient:
    """A FastAPI dependency: the app's ``AsyncClient`` (opened by ``Outlast.lifespan``)."""
    outlast: Outlast | None = getattr(request.app.state, "outlast", None)
    if outlast is None:
        raise ConfigurationError(
            "outlast is not open: pass FastAPI(lifespan=outlast.lifespan)", field="lifespan"
        )
    return outlast.client


OutlastClient = Annotated[AsyncClient, Depends(get_client)]

__all__ = ["Outlast", "OutlastClient", "get_client"]
