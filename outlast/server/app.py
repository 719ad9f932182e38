"""The ASGI app: ``create_app(store)`` serves the API (and, later, the dashboard).

Stateless: everything lives in the store, so several servers behind a load balancer
against one PostgreSQL behave as one.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .._config import settings
from .._errors import OutlastError
from ..store.base import Store
from . import errors
from .api import build_router
from .auth import KeyChecker


class BodyLimit:
    """413 before a large body is buffered: by Content-Length up front, or by counting a
    chunked body as it streams in. Batch endpoints get a larger allowance."""

    def __init__(self, app: ASGIApp, limit: int, batch_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.batch_limit = batch_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.batch_limit if ("batch" in path) else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(send, limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = JSONResponse(
        errors.error_body("payload_too_large", f"the request body is over {limit} bytes"),
        status_code=413,
    )
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body.body})


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

    def env_of(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        env = checker.env_for(secret.strip()) if scheme.lower() == "bearer" and secret else None
        if env is None:
            raise StarletteHTTPException(
                401,
                "a valid secret key is required: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return env

    app.add_exception_handler(OutlastError, errors.outlast_error)
    app.add_exception_handler(RequestValidationError, errors.request_validation)
    app.add_exception_handler(StarletteHTTPException, errors.http_error)

    @app.get("/api/v1/health", tags=["health"], summary="The process is up")
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/api/v1/ready", tags=["health"], summary="The database answers")
    def ready() -> JSONResponse:
        try:
            store.check_schema()
        except Exception as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ok": True})

    app.include_router(build_router(store, env_of))
    if dashboard:
        try:
            from .dashboard import mount
        except ImportError:  # the dashboard arrives with its own issue
            pass
        else:
            mount(app, store)
    limit = settings().max_payload_bytes
    app.add_middleware(
        BodyLimit,
        limit=limit * 2 + 64 * 1024,
        batch_limit=int(os.environ.get("OUTLAST_MAX_BATCH_BYTES", 256 * 1024 * 1024)),
    )
    return app
