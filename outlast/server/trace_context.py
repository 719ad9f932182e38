"""The caller's trace context on requests to the server: with tracing on, a request's W3C
``traceparent`` header is made current while it is handled, so a run triggered over HTTP
opens its trigger span under the app's span that sent the request (``outlast._tracing``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from .. import _observe

_HEADERS = (b"traceparent", b"tracestate")


class TraceContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _observe.OBSERVERS:
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in _HEADERS
        }
        tokens = _observe.extract(headers)
        try:
            await self.app(scope, receive, send)
        finally:
            _observe.detach(tokens)
