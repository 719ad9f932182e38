"""The single-trigger endpoint's fast path: ``POST /api/v1/tasks/{id}/trigger`` answered
before FastAPI's routing, dependencies and middleware stack.

The hot endpoint of a server that apps trigger through. The route in ``api.py`` is the
reference (and what the OpenAPI document shows); this pure ASGI middleware does the same
work for a request that is plainly well formed: its key's environment cached, a length
under the limit, a body that validates. It parses the body from its bytes with pydantic,
builds the run with the task's cached definition (``task_cache.py``), queues it to the
group committer (``trigger_commit.py``) and answers with orjson once it committed, with the
``x-trigger-jwt`` headers ``compat.JwtHeader`` would add. Anything else — an unknown or
uncached key, a trace context to carry, a bad body, a payload the schema refuses, an
unknown task, a failed commit (which wrote nothing) — goes down the full path with its
body, and the route answers as it always has: the same errors, the same shapes.
``OUTLAST_HTTP_FAST_PATH=0`` turns it off.
"""

from __future__ import annotations

import os
import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import _limits, _observe
from ..store.base import ApiStore
from .api import TriggerBody, prepare_async
from .auth import KeyChecker
from .compat import jwt_headers_for
from .task_cache import TaskCache
from .trigger_commit import TriggerCommitter

_PATH = re.compile(r"/api/v1/tasks/([^/\x00]+)/trigger")
_TRACE_HEADERS = (b"traceparent", b"tracestate")
_KEY_HEADERS = (b"x-trigger-request-idempotency-key", b"idempotency-key")


class FastTrigger:
    def __init__(self, app: ASGIApp, store: ApiStore, checker: KeyChecker, limit: int) -> None:
        self.app = app
        self.store = store
        self.checker = checker
        self.limit = limit
        self.committer = TriggerCommitter.of(store)
        self.tasks = TaskCache.of(store)
        self.enabled = os.environ.get("OUTLAST_HTTP_FAST_PATH", "1") != "0"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (_PATH.fullmatch(scope["path"])
                 if scope["type"] == "http" and scope["method"] == "POST" and self.enabled
                 and b"%00" not in scope.get("query_string", b"") else None)
        if match is None:
            await self.app(scope, receive, send)
            return
        length = secret = None
        keys: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                secret = value
            elif name in _KEY_HEADERS:
                keys[name] = value
            elif name in _TRACE_HEADERS and _observe.OBSERVERS:
                secret = None  # the full path makes the caller's trace current
                break
        if (length is None or not length.isdigit() or int(length) > self.limit
                or secret is None or secret[:7].lower() != b"bearer "):
            await self.app(scope, receive, send)
            return
        raw, receive = await _read(receive)
        answer = None
        if raw is not None:
            try:
                answer = await self._trigger(match.group(1), raw, secret[7:].strip().decode(),
                                             keys)
            except Exception:  # the full path answers it, with the route's own error
                answer = None
        if answer is None:
            await self.app(scope, receive, send)
            return
        body, headers = answer
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _trigger(self, task_id: str, raw: bytes, secret: str,
                       keys: dict[bytes, bytes]) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        hit, env = self.checker.cached(secret)
        if not hit or env is None:
            return None
        key_raw = keys.get(_KEY_HEADERS[0]) or keys.get(_KEY_HEADERS[1])
        key = key_raw.decode("latin-1") if key_raw else None
        if key is not None:
            _limits.text(key, "Idempotency-Key")
        body = TriggerBody.model_validate_json(raw)
        new = await prepare_async(self.store, self.tasks, env, task_id, body.payload,
                                  body.options)
        results, _ = await self.committer.trigger(env, [new], key)
        out = orjson.dumps({"id": results[0].id, "isCached": results[0].is_cached})
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(out)).encode())]
        headers += jwt_headers_for(secret, "/trigger", results[0].id)
        return out, headers


async def _read(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole body, and a receive that hands it over again to the full path."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            pending: list[Message] = [message]
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
            break

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    raw = pending[0].get("body") if pending[0]["type"] == "http.request" else None
    return (raw if isinstance(raw, bytes) else None), replay


