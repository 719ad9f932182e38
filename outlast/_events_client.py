"""Events in ``Client`` and ``AsyncClient``, on the client's transport: over the database
through ``_events`` (``StoreEvents``, part of ``StoreTransport``), or over HTTP to
``server/events_api.py`` (``HttpEvents``, part of ``HttpTransport``). Events are
validated here, at the edge, whatever the transport; an HTTP publish sends every event
with an id (generated here when not given), so a retry of the request after a lost answer
deduplicates instead of publishing twice."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from . import _events, _serde
from ._config import settings
from ._http_calls import Plan, Request
from .store._events_base import NewEvent, PublishResult
from .store.base import Store

if TYPE_CHECKING:
    from ._store_transport import StoreTransport
    from ._transport import AsyncTransport, Transport

R = TypeVar("R")


def _result(d: dict[str, Any]) -> PublishResult:
    return PublishResult(id=d["id"], duplicate=bool(d["duplicate"]), run_ids=list(d["run_ids"]))


def _delivery_json(d: Any) -> dict[str, Any]:
    return {"task_id": d.task_id, "outcome": d.outcome, "run_id": d.run_id, "reason": d.reason}


def _new_events(events: Sequence[dict[str, Any]]) -> list[NewEvent]:
    """Events checked at the edge, whatever the transport (nothing is sent if one is bad)."""
    windows = (_events.dedup_seconds(), _events.retention_seconds())
    limit = settings().max_payload_bytes
    return [_events.new_event(e.get("name"), e.get("data"), e.get("id"),
                              field=f"events[{i}]", windows=windows, limit=limit)
            for i, e in enumerate(events)]


class StoreEvents:
    """The event calls of ``StoreTransport``."""

    env: str

    def _ready(self) -> Store:
        raise NotImplementedError

    def publish_events(self, items: Sequence[NewEvent]) -> list[PublishResult]:
        return _events.publish(self._ready(), self.env, items)

    def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]:
        return [_events.event_json(r)
                for r in self._ready().list_events(self.env, name=name, limit=limit)]

    def replay_event(self, event_id: str, task: str | None) -> list[dict[str, Any]]:
        found = self._ready().replay_event(self.env, event_id, task, _events.Planner(self.env))
        return [_delivery_json(d) for d in found]


def publish_plan(items: Sequence[NewEvent]) -> Plan[list[PublishResult]]:
    out = yield Request("POST", "/api/v1/events", {"events": [
        {"name": e.name, "data": _serde.loads(e.data), "id": e.id} for e in items]})
    return [_result(r) for r in out["events"]]


def list_events_plan(name: str | None, limit: int) -> Plan[list[dict[str, Any]]]:
    params: dict[str, Any] = {"limit": limit}
    if name:
        params["name"] = name
    out = yield Request("GET", "/api/v1/events", params=params)
    return list(out["data"])


def replay_event_plan(event_id: str, task: str | None) -> Plan[list[dict[str, Any]]]:
    out = yield Request("POST", f"/api/v1/events/{quote(event_id, safe='')}/replay",
                        {"task": task} if task else {})
    return list(out["deliveries"])


class HttpEvents:
    """The event calls of ``HttpTransport``, to ``server/events_api.py``."""

    def _run(self, plan: Plan[R]) -> R:
        raise NotImplementedError

    def publish_events(self, items: Sequence[NewEvent]) -> list[PublishResult]:
        return self._run(publish_plan(items))

    def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]:
        return self._run(list_events_plan(name, limit))

    def replay_event(self, event_id: str, task: str | None) -> list[dict[str, Any]]:
        return self._run(replay_event_plan(event_id, task))


class AsyncHttpEvents:
    """The event calls of ``AsyncHttpTransport``: the same plans, awaited."""

    async def _run(self, plan: Plan[R]) -> R:
        raise NotImplementedError

    async def publish_events(self, items: Sequence[NewEvent]) -> list[PublishResult]:
        return await self._run(publish_plan(items))

    async def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._run(list_events_plan(name, limit))

    async def replay_event(self, event_id: str, task: str | None) -> list[dict[str, Any]]:
        return await self._run(replay_event_plan(event_id, task))


class AsyncStoreEvents:
    """The event calls of ``AsyncStoreTransport``: ``StoreEvents``' off the loop."""

    sync: StoreTransport

    async def publish_events(self, items: Sequence[NewEvent]) -> list[PublishResult]:
        return await asyncio.to_thread(self.sync.publish_events, items)

    async def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.list_events, name, limit)

    async def replay_event(self, event_id: str, task: str | None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.replay_event, event_id, task)


class EventMethods:
    """``Client``'s event calls, on its transport."""

    _transport: Transport

    def publish(self, name: str, data: Any = None, *, id: str | None = None) -> PublishResult:
        """Publish an event: one run per subscribed task whose filter matches, created in
        the event's transaction; waits for it resume, tasks that cancel on it cancel.
        Publishing the same ``id`` again within its window does nothing new."""
        return self.publish_many([{"name": name, "data": data, "id": id}])[0]

    def publish_many(self, events: Sequence[dict[str, Any]]) -> list[PublishResult]:
        """Publish a batch (``{"name", "data", "id"}`` each) in one transaction."""
        items = _new_events(events)
        return self._transport.publish_events(items) if items else []

    def list_events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events in the log, with the runs each created (and why not)."""
        return self._transport.list_events(name, limit)

    def replay_event(self, event_id: str, task: str | None = None) -> list[dict[str, Any]]:
        """Deliver a logged event again, on purpose: a new run per matching subscriber
        (or for ``task`` only)."""
        return self._transport.replay_event(event_id, task)


class AsyncEventMethods:
    """``AsyncClient``'s event calls, on its async transport."""

    _transport: AsyncTransport

    async def publish(self, name: str, data: Any = None, *, id: str | None = None
                      ) -> PublishResult:
        return (await self.publish_many([{"name": name, "data": data, "id": id}]))[0]

    async def publish_many(self, events: Sequence[dict[str, Any]]) -> list[PublishResult]:
        items = _new_events(events)
        return await self._transport.publish_events(items) if items else []

    async def list_events(self, name: str | None = None, limit: int = 100
                          ) -> list[dict[str, Any]]:
        return await self._transport.list_events(name, limit)

    async def replay_event(self, event_id: str, task: str | None = None
                           ) -> list[dict[str, Any]]:
        return await self._transport.replay_event(event_id, task)
