"""The ASGI app: ``create_app(store)`` serves the API (and, later, the dashboard).

Stateless: everything lives in the store, so several servers behind a load balancer
against one PostgreSQL behave as one.
"""

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .._config import settings
from .._errors import OutlastError
from ..store.base import Store
from . import errors
from .alerts_api import build_alerts_router
from .api import build_router
from .auth import KeyChecker
from .bodies import batch_limit, too_large_message
from .bulk_api import build_bulk_router
from .compat import JwtHeader, build_compat_router
from .events_api import build_events_router
from .fast_trigger import FastTrigger
from .hooks import build_hooks_router
from .metrics_api import build_metrics_router
from .retention_api import build_retention_router
from .schedules_api import build_schedules_router
from .trace_context import TraceContext
from .usage_api import build_usage_router
from .versions_api import build_versions_router
from .webhooks_api import build_webhooks_router


class BodyLimit:
    """413 before a large body reaches the app: by Content-Length up front, or by counting a
    chunked body as it streams in. The batch routes get the batch limit, and count a
    chunked body themselves as they read it (bodies.read_limited), so it is never held
    here whole first."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        # The batch routes only: a task whose id merely contains "batch" gets no more.
        is_batch = path.endswith("/batch") or path.startswith("/api/v3/batches")
        limit = batch_limit() if is_batch else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await _too_large(send, too_large_message(limit) if is_batch else
                                 f"the request body is over {limit} bytes")
                return
            # The HTTP server delivers no more than the declared length.
            await self.app(scope, receive, send)
            return
        if _READS_ITS_OWN_BODY.fullmatch(path):
            await self.app(scope, receive, send)
            return
        # No length (chunked): read the body here, counting. Raising from inside the app's
        # receive() would not do: FastAPI's body parser turns any error there into a 400.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _too_large(send, f"the request body is over {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks),
                                   "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


# The routes that read the raw body under the batch limit (bodies.read_limited).
_READS_ITS_OWN_BODY = re.compile(
    r"/api/v1/tasks/[^/]+/batch|/api/v2/tasks/batch|/api/v3/batches/[^/]+/items"
)


class NoNul:
    """A NUL character in the path or query string is a 422. PostgreSQL text cannot hold
    one, and no id, name or filter needs one; without this check the database refuses the
    query and the client sees a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = ("path" if "\x00" in scope["path"]
                     else "query" if b"%00" in scope.get("query_string", b"") else None)
            if where is not None:
                await _error(send, 422, errors.error_body(
                    "validation_error", f"{where}: a NUL character is not allowed", where))
                return
        await self.app(scope, receive, send)


async def _too_large(send: Send, message: str) -> None:
    await _error(send, 413, errors.error_body("payload_too_large", message, "body"))


async def _error(send: Send, status: int, body: dict[str, Any]) -> None:
    response = JSONResponse(body, status_code=status, headers=errors.no_retry(status))
    await send({"type": "http.response.start", "status": status,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _env_dependency(store: Store, checker: KeyChecker) -> Callable[..., Awaitable[str]]:
    """The dependency that reads the request's secret key: its environment, or a 401."""
    bearer = HTTPBearer(auto_error=False, description="A secret key: `outlast keys create`")

    # On the loop (no thread-pool hop) while the key's answer is cached, as it is for
    # every request of a client but one each couple of seconds.
    async def env_of(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        secret = credentials.credentials.strip() if credentials is not None else ""
        env = None
        if secret:
            hit, env = checker.cached(secret)
            if not hit:
                env = await asyncio.to_thread(checker.env_for, secret)
        if env is None:
            raise StarletteHTTPException(
                401,
                "a valid secret key is required: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return env

    return env_of


def _add_health(app: FastAPI, store: Store) -> None:
    # On the loop, not in the thread pool: whether the process is up should not queue
    # behind other requests' work.
    @app.get("/api/v1/health", tags=["health"], summary="The process is up")
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/api/v1/ready", tags=["health"], summary="The database answers")
    def ready() -> JSONResponse:
        try:
            store.check_schema()
        except Exception as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ok": True})


def create_app(store: Store, *, dashboard: bool = True) -> FastAPI:
    app = FastAPI(
        title="outlast",
        version=__version__,
        description="Durable background jobs: trigger runs, follow them, complete waitpoints.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.store = store
    checker = KeyChecker(store)
    env_of = _env_dependency(store, checker)
    app.add_exception_handler(OutlastError, errors.outlast_error)
    app.add_exception_handler(RequestValidationError, errors.request_validation)
    app.add_exception_handler(StarletteHTTPException, errors.http_error)
    for refused in errors.refused_classes():
        app.add_exception_handler(refused, errors.refused_value)

    _add_health(app, store)
    api = build_router(store, env_of)
    app.include_router(api, responses=errors.RESPONSES)
    app.include_router(build_schedules_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_versions_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_alerts_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_metrics_router(store))
    app.include_router(build_bulk_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_events_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_webhooks_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_hooks_router(store))
    app.include_router(build_usage_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_retention_router(store, env_of), responses=errors.RESPONSES)
    app.include_router(build_compat_router(store, env_of),
                       responses={**errors.RESPONSES, 415: errors.UNSUPPORTED_MEDIA_TYPE})
    if dashboard:
        try:
            from .dashboard import mount
        except ImportError:  # the dashboard arrives with its own issue
            pass
        else:
            mount(app, store)
    limit = settings().max_payload_bytes
    app.add_middleware(JwtHeader)
    app.add_middleware(NoNul)
    app.add_middleware(TraceContext)
    app.add_middleware(BodyLimit, limit=limit * 2 + 64 * 1024)
    # Outermost: the single trigger's fast path, past everything above (fast_trigger.py).
    app.add_middleware(FastTrigger, store=store, checker=checker, limit=limit * 2 + 64 * 1024)
    return app
