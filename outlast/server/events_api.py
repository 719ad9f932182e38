"""Events over HTTP: /api/v1/events.

``POST /api/v1/events`` publishes one event (``{"name", "data", "id"}``) or a batch
(``{"events": [...]}``, one transaction); the answer lists, per event, whether it was a
duplicate and the runs it created. An event's ``id`` makes a retry safe: the same id
within its deduplication window publishes nothing new and answers the first publish's
runs. An event sent without an id gets one; with an ``Idempotency-Key`` header that id is
derived from the key (``req:<key>`` or ``req:<key>:<index>``), so a plain retry of the
request deduplicates too. ``GET`` lists the log (with each event's deliveries: the runs it
created, and why a subscriber did not match); ``POST …/{id}/replay`` delivers one again.
"""

# No `from __future__ import annotations`: FastAPI must see the local Env alias itself.
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from .. import _events, _limits
from .._config import settings
from ..store._events_base import NewEvent
from ..store.base import Store

MAX_BATCH = 1000


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="e.g. user.signup")
    data: Any = Field(None, description="any JSON value; subscribers get it as payload")
    id: str | None = Field(None, min_length=1, max_length=512,
                           description="deduplicates within the window (24 h by default)")


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=128)
    data: Any = None
    id: str | None = Field(None, min_length=1, max_length=512)
    events: list[EventBody] | None = Field(None, max_length=MAX_BATCH,
                                           description="a batch, in one transaction")


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, max_length=128, description="only this subscriber")


def _items(body: PublishBody, key: str | None) -> list[NewEvent]:
    if body.events is not None:
        if body.name is not None or body.id is not None:
            from .._errors import ValidationError

            raise ValidationError("give events, or name/data/id, not both", field="events")
        given: list[tuple[str | None, Any, str | None]] = [
            (e.name, e.data, e.id) for e in body.events]
        prefix = "events"
    else:
        given = [(body.name, body.data, body.id)]
        prefix = ""
    out = []
    windows = (_events.dedup_seconds(), _events.retention_seconds())
    limit = settings().max_payload_bytes
    for i, (name, data, event_id) in enumerate(given):
        if event_id is None and key is not None:
            event_id = f"req:{key}" if not prefix else f"req:{key}:{i}"
        out.append(_events.new_event(name, data, event_id, windows=windows, limit=limit,
                                     field=f"{prefix}[{i}]" if prefix else ""))
    return out


def build_events_router(store: Store, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["events"])
    Env = Annotated[str, Depends(env_dependency)]

    @router.post("/api/v1/events", summary="Publish an event, or a batch in one transaction")
    def publish(
        body: PublishBody,
        env: Env,
        key: str | None = Header(None, alias="idempotency-key",
                                 description="retry-safe request key"),
    ) -> dict[str, Any]:
        if key is not None:
            _limits.text(key, "Idempotency-Key")
        results = _events.publish(store, env, _items(body, key))
        return {"events": [
            {"id": r.id, "duplicate": r.duplicate, "run_ids": r.run_ids} for r in results
        ]}

    @router.get("/api/v1/events", summary="The event log, newest first")
    def list_events(
        env: Env,
        name: str | None = Query(None, max_length=128),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        return {"data": [_events.event_json(r)
                         for r in store.list_events(env, name=name, limit=limit)]}

    @router.get("/api/v1/events/{event_id}", summary="One event and what it did")
    def get_event(event_id: str, env: Env) -> dict[str, Any]:
        record = store.get_event(env, event_id)
        if record is None:
            from .._errors import EventNotFound

            raise EventNotFound(f"no event {event_id!r} in environment {env!r}",
                                field="event_id")
        return _events.event_json(record)

    @router.post("/api/v1/events/{event_id}/replay",
                 summary="Deliver a logged event again, on purpose")
    def replay(event_id: str, env: Env, body: ReplayBody | None = None) -> dict[str, Any]:
        task = body.task if body else None
        found = store.replay_event(env, event_id, task, _events.Planner(env))
        return {"deliveries": [
            {"task_id": d.task_id, "outcome": d.outcome, "run_id": d.run_id,
             "reason": d.reason} for d in found
        ]}

    return router
