"""The public route of incoming webhooks: ``POST /hooks/<id>``, with no API key.

The endpoint's id is unguessable (``_webhooks.new_id``) and the provider's signature is
what authenticates the request: it is checked on the raw body bytes before anything is
parsed or written. Answers: 200 with the event's id (also for a redelivery, which
deduplicates), 401 for a bad, missing or stale signature (nothing stored, counted in
metrics), 404 for an unknown id, 413 for a body over ``OUTLAST_MAX_PAYLOAD_BYTES``, 400
for a signed body the scheme cannot read (not JSON, no ``type``). Nothing in an answer or
a log line repeats a secret or a signature.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import _secret_box, _webhooks
from .._config import settings
from .._webhook_schemes import Refused
from ..store.base import Store
from .errors import ErrorBody, error_body


def _answer(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("Signed, but the scheme cannot read the body (not JSON, no type)"),
    401: _doc("The signature is bad, missing or stale; nothing was stored"),
    404: _doc("No webhook endpoint has this id"),
    413: _doc("The body is over OUTLAST_MAX_PAYLOAD_BYTES"),
}


def build_hooks_router(store: Store) -> APIRouter:
    router = APIRouter(tags=["webhooks"])

    @router.post("/hooks/{endpoint_id}", summary="Receive a provider's signed webhook "
                 "(no API key: the signature authenticates it)", response_model=None,
                 responses=RESPONSES)
    async def receive(endpoint_id: str, request: Request) -> Any:
        limit = settings().max_payload_bytes
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _answer(413, "payload_too_large",
                               f"the request body is over {limit} bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await run_in_threadpool(_receive, store, endpoint_id, headers, bytes(body))

    return router


def _receive(store: Store, endpoint_id: str, headers: dict[str, str], body: bytes
             ) -> JSONResponse:
    endpoint = store.find_webhook(endpoint_id) if len(endpoint_id) <= 64 else None
    if endpoint is None:
        _webhooks.refuse(None, "no such endpoint")
        return _answer(404, "webhook_not_found", "no webhook endpoint at this URL")
    try:
        accepted = _webhooks.receive(store, _secret_box.box(store.url), endpoint, headers,
                                     body)
    except Refused as exc:
        return _answer(401, "invalid_signature", f"signature refused: {exc.reason}")
    except _webhooks.BadPayload as exc:
        return _answer(400, "bad_webhook_payload", str(exc))
    r = accepted.result
    return JSONResponse({"event_id": r.id, "duplicate": r.duplicate, "run_ids": r.run_ids})
