"""Events in ``Client`` and ``AsyncClient``, on the client's transport: over the database
through ``_events`` (``StoreEvents``, part of ``StoreTransport``), or over HTTP to
``server/events_api.py`` (``HttpEvents``, part of ``HttpTransport``). Events are
validated here, at the edge, whatever the transport; an HTTP publish sends every event
with an id (generated here when not given), so a retry of the request after a lost answer
deduplicates instead of publishing twice."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _events, _serde
from .store._events_base import NewEvent, PublishResult
from .store.base import Store

if TYPE_CHECKING:
    from ._transport import Transport


def _result(d: dict[str, Any]) -> PublishResult:
    return PublishResult(id=d["id"], duplicate=bool(d["duplicate"]), run_ids=list(d["run_ids"]))


def _delivery_json(d: Any) -> dict[str, Any]:
    return {"task_id": d.task_id, "outcome": d.outcome, "run_id": d.run_id, "reason": d.reason}


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


class HttpEvents:
    """The event calls of ``HttpTransport``, to ``server/events_api.py``."""

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None, idempotent: bool = False) -> Any:
        raise NotImplementedError

    def publish_events(self, items: Sequence[NewEvent]) -> list[PublishResult]:
        out = self.request("POST", "/api/v1/events", json={"events": [
            {"name": e.name, "data": _serde.loads(e.data), "id": e.id} for e in items]})
        return [_result(r) for r in out["events"]]

    def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if name:
            params["name"] = name
        return list(self.request("GET", "/api/v1/events", params=params)["data"])

    def replay_event(self, event_id: str, task: str | None) -> list[dict[str, Any]]:
        path = f"/api/v1/events/{quote(event_id, safe='')}/replay"
        return list(self.request("POST", path, json={"task": task} if task else {})[
            "deliveries"])


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
        windows = (_events.dedup_seconds(), _events.retention_seconds())
        items = [_events.new_event(e.get("name"), e.get("data"), e.get("id"),
                                   field=f"events[{i}]", windows=windows)
                 for i, e in enumerate(events)]
        return self._transport.publish_events(items) if items else []

    def list_events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events in the log, with the runs each created (and why not)."""
        return self._transport.list_events(name, limit)

    def replay_event(self, event_id: str, task: str | None = None) -> list[dict[str, Any]]:
        """Deliver a logged event again, on purpose: a new run per matching subscriber
        (or for ``task`` only)."""
        return self._transport.replay_event(event_id, task)


class AsyncEventMethods:
    """``AsyncClient``'s event calls: ``EventMethods`` of its sync client in a thread."""

    sync: EventMethods

    async def _in_thread(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    async def publish(self, name: str, data: Any = None, *, id: str | None = None
                      ) -> PublishResult:
        result: PublishResult = await self._in_thread("publish", name, data, id=id)
        return result

    async def publish_many(self, events: Sequence[dict[str, Any]]) -> list[PublishResult]:
        results: list[PublishResult] = await self._in_thread("publish_many", events)
        return results

    async def list_events(self, name: str | None = None, limit: int = 100
                          ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._in_thread("list_events", name, limit)
        return found

    async def replay_event(self, event_id: str, task: str | None = None
                           ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._in_thread("replay_event", event_id, task)
        return found
