"""Store part for incoming webhooks: endpoints, and a verified request's event published
with its delivery record in one transaction (see ``_webhooks_base.py``)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from .._errors import ValidationError
from .._serde import dumps, loads
from ._events_base import EventPlanner, NewEvent, PublishResult
from ._rows import Row, Tx
from ._sql_core import SqlCore
from ._webhooks_base import WebhookDelivery, WebhookEndpoint


def _endpoint(row: Row) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"], env=row["env"], name=row["name"], scheme=row["scheme"],
        event=row["event"], options=loads(row["options"]), secret=row["secret"],
        fingerprint=row["fingerprint"], previous_secret=row["previous_secret"],
        previous_fingerprint=row["previous_fingerprint"],
        previous_until=row["previous_until"], created_at=row["created_at"],
        rotated_at=row["rotated_at"],
    )


def _delivery(row: Row) -> WebhookDelivery:
    return WebhookDelivery(
        endpoint_id=row["endpoint_id"], delivery_id=row["delivery_id"],
        event_id=row["event_id"], event_name=row["event_name"],
        duplicate=bool(row["duplicate"]), run_ids=loads(row["run_ids"]),
        received_at=row["received_at"],
    )


class WebhooksMixin(SqlCore):
    """The incoming webhooks part of the SQL store."""

    # The events part's (``_sql_events.EventsMixin``): a publish inside a transaction the
    # caller holds, and what follows its commit.
    @abc.abstractmethod
    def _publish_in(self, tx: Tx, env: str, events: Sequence[NewEvent],
                    planner: EventPlanner, now: float) -> tuple[list[PublishResult], Any]: ...

    @abc.abstractmethod
    def _published(self, batch: Any) -> None: ...

    def create_webhook(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        e = endpoint
        with self._transaction() as tx:
            added = tx.x("wh_insert", id=e.id, env=e.env, name=e.name, scheme=e.scheme,
                         event=e.event, options=dumps(e.options), secret=e.secret,
                         fingerprint=e.fingerprint, now=e.created_at)
            if not added:
                raise ValidationError(
                    f"name: a webhook named {e.name!r} exists in environment {e.env!r}",
                    field="name")
            return _endpoint(tx.q("wh_find", id=e.id)[0])

    def list_webhooks(self, env: str) -> list[WebhookEndpoint]:
        with self._transaction() as tx:
            return [_endpoint(r) for r in tx.q("wh_list", env=env)]

    def get_webhook(self, env: str, name_or_id: str) -> WebhookEndpoint | None:
        with self._transaction() as tx:
            rows = tx.q("wh_get", env=env, key=name_or_id)
        return _endpoint(rows[0]) if rows else None

    def find_webhook(self, endpoint_id: str) -> WebhookEndpoint | None:
        with self._transaction() as tx:
            rows = tx.q("wh_find", id=endpoint_id)
        return _endpoint(rows[0]) if rows else None

    def rotate_webhook(
        self, env: str, endpoint_id: str, secret: str, fingerprint: str, previous_until: float
    ) -> WebhookEndpoint:
        now = self.now()
        with self._transaction() as tx:
            tx.x("wh_rotate", env=env, id=endpoint_id, secret=secret, fingerprint=fingerprint,
                 until=previous_until, now=now)
            rows = tx.q("wh_get", env=env, key=endpoint_id)
        if not rows:
            from .._errors import WebhookNotFound

            raise WebhookNotFound(f"no webhook {endpoint_id!r} in environment {env!r}",
                                  field="name")
        return _endpoint(rows[0])

    def delete_webhook(self, env: str, endpoint_id: str) -> bool:
        with self._transaction() as tx:
            tx.x("wh_delete_deliveries", env=env, id=endpoint_id)
            return bool(tx.x("wh_delete", env=env, id=endpoint_id))

    def receive_webhook(
        self, env: str, endpoint_id: str, delivery_id: str, event: NewEvent,
        planner: EventPlanner,
    ) -> tuple[PublishResult, WebhookDelivery]:
        now = self.now()
        with self._transaction() as tx:
            results, batch = self._publish_in(tx, env, [event], planner, now)
            result = results[0]
            delivery = WebhookDelivery(endpoint_id, delivery_id, event.id, event.name,
                                       result.duplicate, result.run_ids, now)
            tx.x("wh_insert_delivery", env=env, endpoint_id=endpoint_id,
                 delivery_id=delivery_id, event_id=event.id, event_name=event.name,
                 duplicate=int(result.duplicate), run_ids=dumps(result.run_ids), now=now)
            tx.x("wh_prune_deliveries", env=env, endpoint_id=endpoint_id,
                 before=now - event.retention_seconds)
        self._published(batch)
        return result, delivery

    def webhook_deliveries(
        self, env: str, endpoint_id: str | None = None, limit: int = 50
    ) -> list[WebhookDelivery]:
        with self._transaction() as tx:
            rows = tx.q("wh_deliveries", env=env, endpoint_id=endpoint_id, limit=limit)
        return [_delivery(r) for r in rows]
