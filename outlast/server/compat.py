"""What the official Trigger.dev SDK (v4) needs beyond the plain API: payload packets
(large-payload offload), two-phase streamed batches, idempotency-key resets, and the
``x-trigger-jwt`` header. With these, a Node app points ``TRIGGER_API_URL`` at outlast
and triggers Python tasks unchanged. See docs/how-to/nextjs.md for what is supported.
"""

import base64
import hashlib
import hmac
import json
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import _limits
from .._errors import ValidationError
from .._ids import new_id
from ..store.base import ApiStore, NewRun
from ..waitpoints import signature
from .api import prepare_request
from .bodies import MAX_BATCH_ITEMS, json_response, read_limited
from .task_cache import TaskCache
from .trigger_commit import TriggerCommitter

_ADDITIONAL_KEY_PREFIXES = ("tr_dev_sk_", "tr_stg_sk_", "tr_prod_sk_", "tr_preview_sk_")


class BatchCreate(BaseModel):
    runCount: int = Field(..., gt=0, le=MAX_BATCH_ITEMS)
    idempotencyKey: str | None = Field(None, max_length=2048)


class ResetBody(BaseModel):
    taskIdentifier: str


def _packet_signature(store: ApiStore, env: str, path: str) -> str:
    return signature(store, f"packet\x1f{env}\x1f{path}")


def build_compat_router(store: ApiStore, env_dependency: Any) -> APIRouter:
    """The Trigger.dev SDK's routes that outlast's own API has no twin for."""
    router = APIRouter(tags=["trigger.dev compatibility"])
    _packet_routes(router, store, env_dependency)
    _batch_routes(router, store, env_dependency)
    return router


def _packet_routes(router: APIRouter, store: ApiStore, env_dependency: Any) -> None:
    """Large payloads: where to upload one (a signed URL), and the upload itself."""
    Env = Annotated[str, Depends(env_dependency)]

    @router.put("/api/v2/packets/{filename:path}", summary="Where to upload a large payload")
    def packet_url(filename: str, request: Request, env: Env) -> dict[str, str]:
        return _upload_urls(store, request, env, filename)

    @router.put("/api/v1/packets/{filename:path}", summary="Where to upload (SDK 4.0 path)")
    def packet_url_v1(filename: str, request: Request, env: Env) -> dict[str, str]:
        return _upload_urls(store, request, env, filename)

    @router.put("/api/v1/packet-uploads/{env}/{sig}/{filename:path}",
                summary="Upload a packet to its signed URL (no API key)")
    async def upload(env: str, sig: str, filename: str, request: Request) -> JSONResponse:
        _limits.text(filename, "filename")  # a packet's key in the database
        if not hmac.compare_digest(sig.encode(), _packet_signature(store, env, filename).encode()):
            return JSONResponse({"error": "invalid upload signature", "code": "unauthorized"},
                                status_code=401)
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return JSONResponse({"error": "a packet is UTF-8 text", "code": "validation_error"},
                                status_code=422)
        store.put_packet(env, filename, content_type, text)
        return JSONResponse({"ok": True})


def _batch_routes(router: APIRouter, store: ApiStore, env_dependency: Any) -> None:
    """Idempotency key reset, streamed batches (open, then send items), token claims."""
    Env = Annotated[str, Depends(env_dependency)]

    @router.post("/api/v1/idempotencyKeys/{key}/reset", summary="Release an idempotency key")
    def reset(key: str, body: ResetBody, env: Env) -> dict[str, str]:
        _limits.text(key, "key")
        _limits.text(body.taskIdentifier, "taskIdentifier")
        ids = store.reset_idempotency_key(env, body.taskIdentifier, key)
        return {"id": ids[0] if ids else key}

    @router.post("/api/v3/batches", status_code=202, summary="Open a streamed batch")
    def create_batch(body: BatchCreate, env: Env) -> dict[str, Any]:
        if body.idempotencyKey:  # stored in a unique index: its row has a size limit
            _limits.text(body.idempotencyKey, "idempotencyKey")
        batch_id = new_id("batch")
        if body.idempotencyKey:
            stored, cached = store.remember_request(env, f"v3batch-key:{body.idempotencyKey}",
                                                    batch_id)
            if cached:
                out: dict[str, Any] = {"id": stored, "runCount": body.runCount, "isCached": True}
                out["idempotencyKey"] = body.idempotencyKey
                return out
        meta = json.dumps({"runCount": body.runCount, "key": body.idempotencyKey})
        store.remember_request(env, f"v3batch-meta:{batch_id}", meta)
        return {"id": batch_id, "runCount": body.runCount, "isCached": False}

    @router.post("/api/v3/batches/{batch_id}/items",
                 summary="Stream a batch's items as NDJSON; a resend is deduplicated")
    async def batch_items(batch_id: str, request: Request, env: Env) -> Response:
        ctype = request.headers.get("content-type", "")
        if "ndjson" not in ctype and "json" not in ctype:
            return JSONResponse(
                {"error": "send items as application/x-ndjson", "code": "unsupported_media_type"},
                status_code=415,
            )
        # Read on the loop (under the batch limit), parsed and inserted in a thread: see
        # bodies.py.
        raw = await read_limited(request)
        meta, runs = await run_in_threadpool(_batch_runs, store, env, batch_id, raw)
        # The runs commit in a group with other requests' (trigger_commit.py).
        results, cached = await TriggerCommitter.of(store).trigger(
            env, runs, f"v3batch:{batch_id}")
        return json_response({
            "id": batch_id,
            "itemsAccepted": len(results),
            "itemsDeduplicated": len(results) if cached else 0,
            "sealed": True,
            "enqueuedCount": len(results),
            "expectedCount": int(meta.get("runCount") or len(results)),
            "runs": [{"id": r.id, "isCached": r.is_cached or cached} for r in results],
        })

    @router.post("/api/v1/auth/jwt/claims", summary="Claims for a public access token")
    def claims(env: Env) -> dict[str, Any]:
        return {"sub": env, "pub": True}


def _upload_urls(store: ApiStore, request: Request, env: str, filename: str) -> dict[str, str]:
    _limits.text(filename, "filename")  # a packet's key in the database
    base = str(request.base_url).rstrip("/")
    sig = _packet_signature(store, env, filename)
    return {
        "presignedUrl": f"{base}/api/v1/packet-uploads/{env}/{sig}/{filename}",
        "storagePath": filename,
    }


def _batch_runs(store: ApiStore, env: str, batch_id: str, raw: bytearray
                ) -> tuple[dict[str, Any], list[NewRun]]:
    """A streamed batch's metadata and its items' runs, validated (a resend is answered
    with the same runs: they are triggered under the batch's id as request key)."""
    meta_raw, known = store.remember_request(env, f"v3batch-meta:{batch_id}", "{}")
    meta = orjson.loads(meta_raw) if known else {}
    batch_key = meta.get("key")
    items: dict[int, dict[str, Any]] = {}
    for line in raw.split(b"\n"):
        _add_item(items, line)
    if len(items) > MAX_BATCH_ITEMS:
        raise ValidationError(f"a batch has at most {MAX_BATCH_ITEMS} items", field="items")
    published = TaskCache.of(store).memo(env)
    runs = []
    for index in sorted(items):
        item = items[index]
        options = dict(item.get("options") or {})
        if batch_key and not options.get("idempotencyKey"):
            options["idempotencyKey"] = hashlib.sha256(f"{batch_key}-{index}".encode()
                                                       ).hexdigest()
        task_id = str(item.get("task") or "")
        runs.append(prepare_request(store, env, task_id, item.get("payload"), options,
                                    f"items[{index}]",
                                    published=published(task_id)))
    return meta, runs


def _add_item(items: dict[int, dict[str, Any]], line: bytes | bytearray) -> None:
    if not line.strip():
        return
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ValidationError("a batch item line is not JSON", field="items") from None
    if not isinstance(item, dict) or not isinstance(item.get("index"), int):
        raise ValidationError("each batch item needs an integer index", field="items")
    items.setdefault(item["index"], item)  # the server deduplicates by index


# -- x-trigger-jwt ----------------------------------------------------------------------------

_JWT_PATHS = ("/trigger", "/api/v2/tasks/batch", "/api/v3/batches", "/api/v1/waitpoints/tokens")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_token(secret: str, env: str, scopes: list[str], ttl: float = 3600.0) -> str:
    """An HS256 JWT in the shape the SDK returns as ``publicAccessToken``."""
    now = int(time.time())
    header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    claims = _b64(orjson.dumps({"sub": env, "pub": True, "scopes": scopes,
                                "iat": now, "exp": now + int(ttl),
                                "iss": "https://id.trigger.dev",
                                "aud": "https://api.trigger.dev"}))
    sig = hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(sig)}"


class JwtHeader:
    """Adds ``x-trigger-jwt`` to trigger, batch and token-creation responses. The SDK signs
    its own token when the header is absent, except for keys shaped ``tr_*_sk_*``, which
    need it from the server; sending it always keeps both kinds of key working."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or not (path.endswith(_JWT_PATHS[0]) or path in _JWT_PATHS[1:])):
            await self.app(scope, receive, send)
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        secret = auth.partition(" ")[2].strip()
        start: Message | None = None
        body = b""

        async def capture(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body":
                body += message.get("body", b"")
                if message.get("more_body"):
                    return
                assert start is not None
                headers = list(start.get("headers", []))
                if 200 <= start["status"] < 300 and secret:
                    headers.extend(_jwt_headers(secret, path, body))
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, capture)


def _jwt_headers(secret: str, path: str, body: bytes) -> list[tuple[bytes, bytes]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    obj_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(obj_id, str):
        return []
    return jwt_headers_for(secret, path, obj_id)


def jwt_headers_for(secret: str, path: str, obj_id: str) -> list[tuple[bytes, bytes]]:
    """``x-trigger-jwt`` and its claims for the object ``obj_id`` a response to ``path``
    created."""
    if "waitpoints" in path:
        scopes, ttl = [f"write:waitpoints:{obj_id}"], 24 * 3600.0
    elif "batch" in path:
        scopes, ttl = [f"read:batch:{obj_id}"], 3600.0
    else:
        scopes, ttl = [f"read:runs:{obj_id}"], 3600.0
    token = public_token(secret, "", scopes, ttl)
    claims = orjson.dumps({"pub": True, "scopes": scopes})
    return [(b"x-trigger-jwt", token.encode()), (b"x-trigger-jwt-claims", claims)]
