"""Incoming webhook endpoints over HTTP: /api/v1/webhooks (authenticated like the rest).

``POST`` creates an endpoint (its secret goes in, and never comes out: answers show a
fingerprint), ``GET`` lists them or shows one with its last deliveries, ``POST
…/{name}/rotate`` seals in a new secret with an overlap during which the old one still
verifies, ``DELETE`` removes one. The public ``/hooks/<id>`` route is ``hooks.py``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run
# time, and ``Env`` is local to ``build_webhooks_router``.
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from .. import _secret_box, _webhooks
from ..store.base import Store
from .durations import seconds_from


class CreateWebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64, description="unique in the environment")
    scheme: Literal["stripe", "github", "standard", "hmac-sha256"]
    secret: str = Field(..., min_length=8, max_length=512,
                        description="the provider's signing secret; never shown again")
    event: str | None = Field(None, max_length=128,
                              description="event name template, e.g. stripe.{type}")
    tolerance: float | None = Field(None, description="stripe, standard: timestamp "
                                    "tolerance in seconds (default 300)")
    header: str | None = Field(None, max_length=128,
                               description="hmac-sha256: the signature header (X-Signature)")
    encoding: Literal["hex", "base64"] | None = Field(None, description="hmac-sha256")
    prefix: str | None = Field(None, max_length=128,
                               description="hmac-sha256: before the digest, e.g. sha256=")
    id_header: str | None = Field(None, max_length=128,
                                  description="hmac-sha256: the delivery id header")


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: str = Field(..., min_length=8, max_length=512)
    overlap: str | float = Field(86400.0, description="how long the old secret stays "
                                 "valid: seconds, or 24h, 30m")


def build_webhooks_router(store: Store, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["webhooks"])
    Env = Annotated[str, Depends(env_dependency)]

    @router.post("/api/v1/webhooks", summary="Create an incoming webhook endpoint")
    def create_webhook(body: CreateWebhookBody, env: Env) -> dict[str, Any]:
        box = _secret_box.box(store.url)  # EncryptionKeyMissing before anything is written
        options = {"tolerance": body.tolerance, "header": body.header,
                   "encoding": body.encoding, "prefix": body.prefix,
                   "id_header": body.id_header}
        created = _webhooks.create(store, box, env, body.name, body.scheme, body.secret,
                                   body.event, options, now=store.now())
        return _webhooks.describe(created, store.now())

    @router.get("/api/v1/webhooks", summary="List incoming webhook endpoints")
    def list_webhooks(env: Env) -> dict[str, Any]:
        now = store.now()
        return {"data": [_webhooks.describe(e, now) for e in store.list_webhooks(env)]}

    @router.get("/api/v1/webhooks/{name}", summary="One endpoint with its last deliveries")
    def show_webhook(name: str, env: Env,
                     limit: int = Query(20, ge=1, le=500)) -> dict[str, Any]:
        endpoint = _webhooks.get(store, env, name)
        deliveries = store.webhook_deliveries(env, endpoint.id, limit)
        return {**_webhooks.describe(endpoint, store.now()),
                "deliveries": [_webhooks.delivery_json(d) for d in deliveries]}

    @router.post("/api/v1/webhooks/{name}/rotate",
                 summary="A new secret; the old one stays valid for the overlap")
    def rotate_webhook(name: str, body: RotateBody, env: Env) -> dict[str, Any]:
        box = _secret_box.box(store.url)
        now = store.now()
        overlap = seconds_from(body.overlap, "overlap", now) or 0.0
        rotated = _webhooks.rotate(store, box, env, name, body.secret, overlap, now=now)
        return _webhooks.describe(rotated, now)

    @router.delete("/api/v1/webhooks/{name}", summary="Delete an endpoint and its deliveries")
    def delete_webhook(name: str, env: Env) -> dict[str, Any]:
        endpoint = _webhooks.get(store, env, name)
        store.delete_webhook(env, endpoint.id)
        return {"id": endpoint.id, "deleted": True}

    return router
