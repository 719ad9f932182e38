"""Schedules on the wire and in ``Client``: the Trigger.dev JSON shape of a schedule, the
schedule calls mixed into ``Client`` and ``AsyncClient`` (on the client's transport: the
store's through ``_schedule_crud``, HTTP's through ``HttpSchedules`` here, to
``server/schedules_api.py``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from . import cron as _cron
from ._http_calls import Plan, Request, ts
from ._schedule_crud import UNSET, task_id_of
from .store.base import Schedule

if TYPE_CHECKING:
    from ._transport import Transport
    from .tasks import Task

R = TypeVar("R")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    moment = _dt.datetime.fromtimestamp(ts, _dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _env_type(env: str) -> str:
    return {"dev": "DEVELOPMENT", "development": "DEVELOPMENT", "staging": "STAGING",
            "preview": "PREVIEW"}.get(env, "PRODUCTION")


def schedule_json(s: Schedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "task": s.task_id,
        "type": s.type,
        "active": s.active,
        "deduplicationKey": s.deduplication_key,
        "externalId": s.external_id,
        "generator": {"type": "CRON", "expression": s.cron,
                      "description": _cron.describe(s.cron)},
        "timezone": s.timezone,
        "nextRun": iso(s.next_run_at) if s.active else None,
        "lastRun": iso(s.last_run_at),
        "lastRunId": s.last_run_id,
        "createdAt": iso(s.created_at),
        "updatedAt": iso(s.updated_at),
        "environments": [{"id": s.env, "type": _env_type(s.env), "userName": None}],
    }


def schedule_from_json(d: dict[str, Any]) -> Schedule:
    envs = d.get("environments") or [{}]
    return Schedule(
        id=d["id"],
        env=str(envs[0].get("id") or ""),
        task_id=d["task"],
        type=d["type"],
        cron=d["generator"]["expression"],
        timezone=d.get("timezone") or "UTC",
        external_id=d.get("externalId"),
        deduplication_key=d.get("deduplicationKey"),
        active=bool(d.get("active")),
        next_run_at=ts(d.get("nextRun")),
        last_run_at=ts(d.get("lastRun")),
        last_run_id=d.get("lastRunId"),
        created_at=ts(d.get("createdAt")) or 0.0,
        updated_at=ts(d.get("updatedAt")) or 0.0,
    )


def _path(schedule_id: str, action: str = "") -> str:
    return f"/api/v1/schedules/{quote(schedule_id, safe='')}{action}"


def _schedule_plan(method: str, path: str, body: Any = None) -> Plan[Schedule]:
    return schedule_from_json((yield Request(method, path, body)))


class HttpSchedules:
    """The schedule calls of ``HttpTransport``, to ``server/schedules_api.py``."""

    def _run(self, plan: Plan[R]) -> R:
        raise NotImplementedError

    def create_schedule(self, task: Task[Any, Any] | str, cron: str, timezone: str | None,
                        external_id: str | None, deduplication_key: str | None) -> Schedule:
        body = {"task": task_id_of(task), "cron": cron, "timezone": timezone,
                "externalId": external_id, "deduplicationKey": deduplication_key}
        return self._run(_schedule_plan(
            "POST", "/api/v1/schedules", {k: v for k, v in body.items() if v is not None}
        ))

    def retrieve_schedule(self, schedule_id: str) -> Schedule:
        return self._run(_schedule_plan("GET", _path(schedule_id)))

    def list_schedules(self, task_id: str | None, external_id: str | None, type: str | None,
                       active: bool | None, page: int, per_page: int) -> list[Schedule]:
        params: dict[str, Any] = {"page": page, "perPage": per_page}
        for name, value in (("task", task_id), ("externalId", external_id), ("type", type),
                            ("active", None if active is None else str(active).lower())):
            if value is not None:
                params[name] = value
        return self._run(_list_plan(params))

    def update_schedule(self, schedule_id: str, task: Task[Any, Any] | str | None,
                        cron: str | None, timezone: str | None, external_id: str | None
                        ) -> Schedule:
        body: dict[str, Any] = {"task": None if task is None else task_id_of(task),
                                "cron": cron, "timezone": timezone}
        body = {k: v for k, v in body.items() if v is not None}
        if external_id is not UNSET:
            body["externalId"] = external_id
        return self._run(_schedule_plan("PUT", _path(schedule_id), body))

    def set_schedule_active(self, schedule_id: str, active: bool) -> Schedule:
        action = "/activate" if active else "/deactivate"
        return self._run(_schedule_plan("POST", _path(schedule_id, action)))

    def delete_schedule(self, schedule_id: str) -> Schedule:
        return self._run(_schedule_plan("DELETE", _path(schedule_id)))


def _list_plan(params: dict[str, Any]) -> Plan[list[Schedule]]:
    out = yield Request("GET", "/api/v1/schedules", params=params)
    return [schedule_from_json(d) for d in out["data"]]


class ScheduleMethods:
    """``Client``'s schedule calls, on its transport."""

    _transport: Transport

    def create_schedule(
        self,
        task: Task[Any, Any] | str,
        cron: str,
        *,
        timezone: str | None = None,
        external_id: str | None = None,
        deduplication_key: str | None = None,
    ) -> Schedule:
        """Create an imperative schedule; with a ``deduplication_key`` already in use,
        update that schedule instead of adding a second one."""
        return self._transport.create_schedule(task, cron, timezone, external_id,
                                               deduplication_key)

    def retrieve_schedule(self, schedule_id: str) -> Schedule:
        return self._transport.retrieve_schedule(schedule_id)

    def list_schedules(
        self,
        *,
        task: Task[Any, Any] | str | None = None,
        external_id: str | None = None,
        type: str | None = None,
        active: bool | None = None,
        page: int = 1,
        per_page: int = 100,
    ) -> list[Schedule]:
        task_id = None if task is None else task_id_of(task)
        return self._transport.list_schedules(task_id, external_id, type, active, page,
                                              per_page)

    def update_schedule(
        self,
        schedule_id: str,
        *,
        task: Task[Any, Any] | str | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        external_id: str | None = UNSET,
    ) -> Schedule:
        return self._transport.update_schedule(schedule_id, task, cron, timezone, external_id)

    def activate_schedule(self, schedule_id: str) -> Schedule:
        return self._transport.set_schedule_active(schedule_id, True)

    def deactivate_schedule(self, schedule_id: str) -> Schedule:
        return self._transport.set_schedule_active(schedule_id, False)

    def delete_schedule(self, schedule_id: str) -> Schedule:
        return self._transport.delete_schedule(schedule_id)


class AsyncScheduleMethods:
    """``AsyncClient``'s schedule calls: ``ScheduleMethods`` of its sync client, in a
    thread. Schedules are defined a few times per deploy, not per request, so they have
    no async transport of their own; an AsyncClient built on a Client reaches the server
    through that client's session for them.
    """

    sync: ScheduleMethods

    async def _schedule_call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    async def create_schedule(self, task: Task[Any, Any] | str, cron: str, **kw: Any) -> Schedule:
        s: Schedule = await self._schedule_call("create_schedule", task, cron, **kw)
        return s

    async def retrieve_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._schedule_call("retrieve_schedule", schedule_id)
        return s

    async def list_schedules(self, **filters: Any) -> list[Schedule]:
        out: list[Schedule] = await self._schedule_call("list_schedules", **filters)
        return out

    async def update_schedule(self, schedule_id: str, **changes: Any) -> Schedule:
        s: Schedule = await self._schedule_call("update_schedule", schedule_id, **changes)
        return s

    async def activate_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._schedule_call("activate_schedule", schedule_id)
        return s

    async def deactivate_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._schedule_call("deactivate_schedule", schedule_id)
        return s

    async def delete_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._schedule_call("delete_schedule", schedule_id)
        return s
