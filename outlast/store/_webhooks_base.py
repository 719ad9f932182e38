"""Incoming webhooks, the store's side: endpoints, their deliveries, the abstract methods.

An endpoint (``outlast webhooks create``) has a public id, the part of its URL
``/hooks/<id>`` (128 random bits or more: the URL is unguessable, the signature is
what authenticates), a scheme, an event name template and its signing secret, sealed
by ``outlast/_secret_box.py`` (HMAC needs the plaintext, so it cannot be hashed). A
rotation keeps the previous sealed secret until ``previous_until``.

A verified request publishes its event and records its delivery in ONE transaction
(``receive_webhook``): the event id is derived from the provider's delivery id, so a
redelivery deduplicates through the event log's own dedupe. A refused request writes
nothing at all, not even a delivery row (refusals are counted in memory and metrics).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from ._events_base import EventPlanner, NewEvent, PublishResult


@dataclass(frozen=True)
class WebhookEndpoint:
    """An endpoint as stored. ``secret`` and ``previous_secret`` are sealed text: open
    them with the secret box, never show them."""

    id: str
    env: str
    name: str
    scheme: str
    event: str  # the event name template, e.g. stripe.{type}
    options: dict[str, Any]  # scheme options: tolerance, header, encoding, prefix
    secret: str
    fingerprint: str
    previous_secret: str | None
    previous_fingerprint: str | None
    previous_until: float | None
    created_at: float
    rotated_at: float | None


@dataclass(frozen=True)
class WebhookDelivery:
    """One accepted request: the provider's delivery id, and the event it published."""

    endpoint_id: str
    delivery_id: str
    event_id: str
    event_name: str
    duplicate: bool
    run_ids: list[str]
    received_at: float


class WebhookStore(abc.ABC):
    """Incoming webhook endpoints and their deliveries (see the module docstring)."""

    @abc.abstractmethod
    def create_webhook(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        """Insert an endpoint; a name taken in its environment is a ValidationError."""

    @abc.abstractmethod
    def list_webhooks(self, env: str) -> list[WebhookEndpoint]: ...

    @abc.abstractmethod
    def get_webhook(self, env: str, name_or_id: str) -> WebhookEndpoint | None:
        """By name or id, in the environment."""

    @abc.abstractmethod
    def find_webhook(self, endpoint_id: str) -> WebhookEndpoint | None:
        """By public id alone, whatever its environment: the ``/hooks/<id>`` route's look-up
        (the id is the capability that names the environment)."""

    @abc.abstractmethod
    def rotate_webhook(
        self, env: str, endpoint_id: str, secret: str, fingerprint: str, previous_until: float
    ) -> WebhookEndpoint:
        """Seal in a new secret; the current one stays valid until ``previous_until``."""

    @abc.abstractmethod
    def delete_webhook(self, env: str, endpoint_id: str) -> bool:
        """Delete an endpoint and its delivery records; whether it existed."""

    @abc.abstractmethod
    def receive_webhook(
        self, env: str, endpoint_id: str, delivery_id: str, event: NewEvent,
        planner: EventPlanner,
    ) -> tuple[PublishResult, WebhookDelivery]:
        """Publish a verified request's event and record the delivery, in one transaction."""

    @abc.abstractmethod
    def webhook_deliveries(
        self, env: str, endpoint_id: str | None = None, limit: int = 50
    ) -> list[WebhookDelivery]:
        """Newest first; of one endpoint, or of every endpoint in the environment."""
