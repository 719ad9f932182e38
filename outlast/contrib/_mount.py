"""outlast's API and dashboard served under a path of someone else's app.

``embedded_app(store, prefix, auth)`` is the server's app (``create_app``) with the
dashboard's own login off, behind the host app's ``auth``, and with the dashboard's
root-relative links (``href="/runs"``, redirects, live-update URLs) moved under
``prefix``. The API keeps its secret keys: it is for programs, whatever ``auth`` admits.
The FastAPI, Django and Flask integrations all serve this one app.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..store.base import Store

# Attributes whose value is a root-relative URL in the dashboard's pages; in JSON (the
# live updates carry HTML fragments) the quote is escaped.
_LINK = re.compile(rb'((?:href|src|action|data-live-url)=\\?")/(?!/)')

Auth = Callable[[Request], "bool | Awaitable[bool]"]

# Routes whose caller is another system, not a user of the host app, and that carry their
# own credential: an incoming webhook (the provider's signature) and a waitpoint token's
# callback URL (its HMAC). The host app's auth would refuse every such caller.
_OWN_CREDENTIAL = re.compile(
    r"/(?:hooks/[^/]+|api/v1/waitpoints/tokens/[^/]+/callback/[^/]+)/?$")


class Prefixed:
    """Moves the dashboard's root-relative links and redirects under ``prefix``."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "/api/" in scope["path"]:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            assert start is not None
            body = _LINK.sub(rb"\1" + self.prefix.replace(b"\\", b"\\\\") + b"/",
                             b"".join(chunks))
            headers = []
            for name, value in start.get("headers", []):
                if name == b"content-length":
                    value = str(len(body)).encode()
                elif name == b"location" and value.startswith(b"/"):
                    value = self.prefix + value
                headers.append((name, value))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


class Guarded:
    """Lets a request through only when ``auth(request)`` says yes (True, or no
    exception); otherwise 403, or the status of the HTTPException ``auth`` raised.
    A POST to a route that carries its own credential (``_OWN_CREDENTIAL``) is left to
    that route's check."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        own = scope.get("method") == "POST" and _OWN_CREDENTIAL.search(scope.get("path", ""))
        if scope["type"] == "http" and self.auth is not None and not own:
            try:
                allowed: Any = self.auth(Request(scope, receive))
                if inspect.isawaitable(allowed):
                    allowed = await allowed
            except HTTPException as exc:
                response = PlainTextResponse(str(exc.detail), status_code=exc.status_code,
                                             headers=exc.headers)
                await response(scope, receive, send)
                return
            if not allowed:
                await PlainTextResponse("forbidden", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def embedded_app(store: Store, prefix: str, auth: Auth | None = None) -> ASGIApp:
    """outlast's API and dashboard for serving under ``prefix``, behind ``auth``."""
    from ..server.app import create_app
    from ..server.dashboard import mount

    app = create_app(store, dashboard=False)
    mount(app, store, require_login=False)
    return Guarded(Prefixed(app, prefix), auth)
