"""Incoming webhooks: endpoints that turn a provider's signed request into an event.

``create`` validates an endpoint (scheme, event name template, options), seals its secret
(``_secret_box``) and stores it under an unguessable id, the last part of its URL
``/hooks/<id>``. ``receive`` is the route's whole job once the body is read: find the
endpoint, verify the signature on the raw bytes with every secret in force
(``_webhook_schemes``), build the event (name from the template, data the parsed body,
id derived from the provider's delivery id so a redelivery deduplicates through the event
log's dedupe) and publish it with its delivery record in one transaction. A refused
request writes nothing; it is counted here (``refusals``) and in metrics.

Callers: ``outlast/server/hooks.py`` (the public route), ``outlast/server/webhooks_api.py``
(``/api/v1/webhooks``), ``outlast/_cli_webhooks.py`` and the dashboard's Webhooks page.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import secrets as _secrets
import string
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _events, _limits, _observe
from ._errors import ValidationError, WebhookNotFound
from ._secret_box import SecretBox
from ._webhook_schemes import SCHEMES, Refused, standard_key, verify
from .store._events_base import PublishResult
from .store._webhooks_base import WebhookDelivery, WebhookEndpoint, WebhookStore
from .store.base import Store
from .waitpoints import public_url

log = logging.getLogger("outlast.webhooks")

_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,63}")
MAX_DELIVERY_ID = 200
ENCODINGS = ("hex", "base64")
# What a scheme's event name template may use.
FIELDS = {
    "stripe": {"type"},
    "github": {"event", "action"},
    "standard": {"type"},
    "hmac-sha256": {"type"},
}
DEFAULT_EVENTS = {"stripe": "stripe.{type}", "github": "github.{event}",
                  "standard": "{type}", "hmac-sha256": "webhook.received"}

# Refusals by (scheme, reason), this process's: nothing is written for one.
refusals: collections.Counter[tuple[str, str]] = collections.Counter()
_refusals_lock = threading.Lock()


def new_id() -> str:
    """An endpoint's public id: 192 random bits."""
    return "wh_" + _secrets.token_urlsafe(24)


def url(endpoint_id: str) -> str:
    return f"{public_url()}/hooks/{endpoint_id}"


def _template_fields(template: str, scheme: str) -> set[str]:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError:
        raise ValidationError(f"event: invalid template {template!r}", field="event") from None
    unknown = names - FIELDS[scheme]
    if unknown:
        allowed = ", ".join("{" + f + "}" for f in sorted(FIELDS[scheme]))
        raise ValidationError(f"event: {scheme} templates may use {allowed}, not "
                              + ", ".join("{" + f + "}" for f in sorted(unknown)),
                              field="event")
    # The template with every field filled must be a valid event name.
    _events.check_name(template.format(**{f: "x" for f in names}), "event")
    return names


def check_options(scheme: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that apply to ``scheme``, validated; unknown ones are an error."""
    allowed = {"stripe": {"tolerance"}, "standard": {"tolerance"}, "github": set(),
               "hmac-sha256": {"header", "encoding", "prefix", "id_header"}}[scheme]
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in allowed:
            raise ValidationError(f"{key}: not an option of the {scheme} scheme", field=key)
        if key == "tolerance":
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 1 <= value <= 7 * 86400:
                raise ValidationError("tolerance: seconds between 1 and 604800",
                                      field="tolerance")
            out[key] = float(value)
        elif key == "encoding":
            if value not in ENCODINGS:
                raise ValidationError("encoding: hex or base64", field="encoding")
            out[key] = value
        else:
            text = _limits.text(value, key, max_bytes=128)
            if key != "prefix" and not re.fullmatch(r"[A-Za-z0-9-]+", text):
                raise ValidationError(f"{key}: a header name", field=key)
            out[key] = text
    return out


def check_secret(scheme: str, secret: Any, field: str = "secret") -> str:
    if not isinstance(secret, str) or len(secret.strip()) < 8 or len(secret) > 512:
        raise ValidationError(f"{field}: a secret of 8 to 512 characters", field=field)
    if scheme == "standard":
        try:
            standard_key(secret)
        except ValueError as exc:
            raise ValidationError(f"{field}: {exc}", field=field) from None
    return secret


def create(store: WebhookStore, box: SecretBox, env: str, name: str, scheme: str,
           secret: str, event: str | None = None,
           options: Mapping[str, Any] | None = None, *, now: float) -> WebhookEndpoint:
    """Validate and store an endpoint; nothing is written if this raises."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError("name: 1-64 letters, digits and . _ - (starting with a "
                              f"letter or digit), not {name!r}", field="name")
    if scheme not in SCHEMES:
        raise ValidationError(f"scheme: one of {', '.join(SCHEMES)}", field="scheme")
    event = event or DEFAULT_EVENTS[scheme]
    _limits.text(event, "event", max_bytes=128)
    _template_fields(event, scheme)
    checked = check_options(scheme, options or {})
    check_secret(scheme, secret)
    endpoint = WebhookEndpoint(
        id=new_id(), env=env, name=name, scheme=scheme, event=event, options=checked,
        secret=box.seal(secret), fingerprint=box.fingerprint(secret), previous_secret=None,
        previous_fingerprint=None, previous_until=None, created_at=now, rotated_at=None)
    created = store.create_webhook(endpoint)
    log.debug("webhook created", extra={"webhook": created.id, "env": env, "scheme": scheme})
    return created


def get(store: WebhookStore, env: str, name_or_id: str) -> WebhookEndpoint:
    found = store.get_webhook(env, name_or_id)
    if found is None:
        raise WebhookNotFound(f"no webhook {name_or_id!r} in environment {env!r}",
                              field="name")
    return found


def rotate(store: WebhookStore, box: SecretBox, env: str, name_or_id: str, secret: str,
           overlap: float, *, now: float) -> WebhookEndpoint:
    """A new secret; the current one is still accepted for ``overlap`` seconds."""
    endpoint = get(store, env, name_or_id)
    check_secret(endpoint.scheme, secret)
    if not 0 <= overlap <= 30 * 86400:
        raise ValidationError("overlap: between 0 and 30 days", field="overlap")
    return store.rotate_webhook(env, endpoint.id, box.seal(secret), box.fingerprint(secret),
                                now + overlap)


def describe(e: WebhookEndpoint, now: float | None = None) -> dict[str, Any]:
    """An endpoint as the API, the CLI and the dashboard show it: never a secret."""
    previous = e.previous_fingerprint if e.previous_until is not None and (
        now is None or e.previous_until > now) else None
    return {
        "id": e.id, "name": e.name, "url": url(e.id), "scheme": e.scheme, "event": e.event,
        "options": e.options, "fingerprint": e.fingerprint,
        "previous_fingerprint": previous,
        "previous_until": e.previous_until if previous else None,
        "created_at": e.created_at, "rotated_at": e.rotated_at,
    }


def delivery_json(d: WebhookDelivery) -> dict[str, Any]:
    return {"delivery_id": d.delivery_id, "event_id": d.event_id, "event": d.event_name,
            "duplicate": d.duplicate, "run_ids": d.run_ids, "received_at": d.received_at}


# -- receiving --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    endpoint: WebhookEndpoint
    result: PublishResult
    delivery: WebhookDelivery


class BadPayload(Exception):
    """Signed, but not what the scheme needs (not JSON, no ``type``): 400, nothing stored."""


def refuse(endpoint: WebhookEndpoint | None, reason: str) -> None:
    scheme = endpoint.scheme if endpoint is not None else "unknown"
    with _refusals_lock:
        refusals[(scheme, reason)] += 1
    _observe.webhook_refused(scheme, reason)
    # The endpoint's id and the reason only: never a header, a signature or the body.
    log.info("webhook refused: %s", reason,
             extra={"webhook": endpoint.id if endpoint else None})


def _secrets_in_force(box: SecretBox, e: WebhookEndpoint, now: float) -> list[str]:
    found = [box.open(e.secret)]
    if e.previous_secret is not None and e.previous_until is not None \
            and now < e.previous_until:
        found.append(box.open(e.previous_secret))
    return found


def receive(store: Store, box: SecretBox, endpoint: WebhookEndpoint,
            headers: Mapping[str, str], body: bytes) -> Accepted:
    """Verify, then publish with the delivery record. Raises ``Refused`` (401: counted,
    nothing written) or ``BadPayload`` (400: nothing written)."""
    now = store.now()
    try:
        verified = verify(endpoint.scheme, _secrets_in_force(box, endpoint, now), headers,
                          body, now, endpoint.options)
    except Refused as exc:
        refuse(endpoint, exc.reason)
        raise
    data = _parse(endpoint, body)
    delivery_id = verified.delivery_id
    if delivery_id is None:  # Stripe: the event object's own id
        delivery_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(delivery_id, str) or not delivery_id:
            raise BadPayload("the body has no string id")
    if len(delivery_id) > MAX_DELIVERY_ID or "\x00" in delivery_id:
        raise BadPayload(f"the delivery id is over {MAX_DELIVERY_ID} characters")
    values = dict(verified.values)
    if isinstance(data, dict):
        for key in ("type", "action"):
            if isinstance(data.get(key), str):
                values.setdefault(key, data[key])
    try:
        name = endpoint.event.format_map(_Strict(values))
        event = _events.new_event(name, data, f"webhook:{endpoint.name}:{delivery_id}")
    except (KeyError, ValidationError) as exc:
        raise BadPayload(f"cannot name the event from {endpoint.event!r}: {exc}") from None
    result, delivery = store.receive_webhook(endpoint.env, endpoint.id, delivery_id, event,
                                             _events.Planner(endpoint.env))
    log.info("webhook accepted", extra={"webhook": endpoint.id, "event_id": event.id,
                                        "duplicate": result.duplicate})
    return Accepted(endpoint, result, delivery)


class _Strict(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise KeyError(f"the request gives no {key!r}")


def _parse(endpoint: WebhookEndpoint, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        if endpoint.scheme == "hmac-sha256":
            try:
                return body.decode()
            except UnicodeDecodeError:
                pass
        raise BadPayload("the body is not JSON") from None
