"""The dashboard's Webhooks page: incoming webhook endpoints (scheme, event template,
URL, secret fingerprints, created and rotated) and the last deliveries each accepted,
with the event each published (a link to it on the Events page). Refused requests are
not stored, so they are not here: ``outlast_webhooks_refused_total`` counts them."""

from __future__ import annotations

from starlette.responses import Response

from ... import _webhooks
from ...store._webhooks_base import WebhookStore
from ._web import Ctx

DELIVERIES = 50


def webhooks_page(ctx: Ctx) -> Response:
    store = ctx.store
    if not isinstance(store, WebhookStore):
        return ctx.render("webhooks.html", active="webhooks", endpoints=[], deliveries=[],
                          names={}, selected="", limit=DELIVERIES)
    now = ctx.store.now()
    endpoints = [_webhooks.describe(e, now) for e in store.list_webhooks(ctx.env)]
    names = {e["id"]: e["name"] for e in endpoints}
    selected = ctx.arg("webhook") or ""
    chosen = next((e["id"] for e in endpoints if selected in (e["id"], e["name"])), None)
    deliveries = (store.webhook_deliveries(ctx.env, chosen, DELIVERIES)
                  if chosen or not selected else [])
    return ctx.render("webhooks.html", active="webhooks", endpoints=endpoints,
                      deliveries=deliveries, names=names, selected=selected,
                      limit=DELIVERIES)
