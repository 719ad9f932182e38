"""Events in ``Client`` and ``AsyncClient``: publish (one or a batch), read the log,
replay one on purpose; over the database through ``_events``, or over HTTP to
``server/events_api.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _events
from .store._events_base import NewEvent, PublishResult
from .store.base import Store

if TYPE_CHECKING:
    from ._http import HttpTransport


def _result(d: dict[str, Any]) -> PublishResult:
    return PublishResult(id=d["id"], duplicate=bool(d["duplicate"]), run_ids=list(d["run_ids"]))


class EventMethods:
    """``Client``'s event calls."""

    env: str
    _http: HttpTransport | None

    def _ready(self) -> Store:
        raise NotImplementedError

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
        if self._http is not None:
            # Every event carries an id (generated here when not given), so a retry of
            # this request after a lost answer deduplicates instead of publishing twice.
            out = self._http.request("POST", "/api/v1/events", json={"events": [
                {"name": e.name, "data": _wire(e), "id": e.id} for e in items]})
            return [_result(r) for r in out["events"]]
        return _events.publish(self._ready(), self.env, items)

    def list_events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events in the log, with the runs each created (and why not)."""
        if self._http is not None:
            params: dict[str, Any] = {"limit": limit}
            if name:
                params["name"] = name
            return list(self._http.request("GET", "/api/v1/events", params=params)["data"])
        return [_events.event_json(r)
                for r in self._ready().list_events(self.env, name=name, limit=limit)]

    def replay_event(self, event_id: str, task: str | None = None) -> list[dict[str, Any]]:
        """Deliver a logged event again, on purpose: a new run per matching subscriber
        (or for ``task`` only)."""
        if self._http is not None:
            body = {"task": task} if task else {}
            path = f"/api/v1/events/{quote(event_id, safe='')}/replay"
            return list(self._http.request("POST", path, json=body)["deliveries"])
        found = self._ready().replay_event(self.env, event_id, task, _events.Planner(self.env))
        return [{"task_id": d.task_id, "outcome": d.outcome, "run_id": d.run_id,
                 "reason": d.reason} for d in found]


def _wire(e: NewEvent) -> Any:
    from . import _serde

    return _serde.loads(e.data)


class AsyncEventMethods:
    """``AsyncClient``'s event calls: ``EventMethods`` in a thread."""

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def publish(self, name: str, data: Any = None, *, id: str | None = None
                      ) -> PublishResult:
        result: PublishResult = await self._call("publish", name, data, id=id)
        return result

    async def publish_many(self, events: Sequence[dict[str, Any]]) -> list[PublishResult]:
        results: list[PublishResult] = await self._call("publish_many", events)
        return results

    async def list_events(self, name: str | None = None, limit: int = 100
                          ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._call("list_events", name, limit)
        return found

    async def replay_event(self, event_id: str, task: str | None = None
                           ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._call("replay_event", event_id, task)
        return found
