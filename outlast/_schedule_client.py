"""Schedules on the wire and in ``Client``: the Trigger.dev JSON shape of a schedule, and
the schedule calls mixed into ``Client`` and ``AsyncClient`` (over the database through
``_schedule_crud``, or over HTTP to ``server/schedules_api.py``).
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from . import cron as _cron
from ._schedule_crud import UNSET, create, delete, get, set_active, task_id_of, update
from .store.base import Schedule, ScheduleStore
from .tasks import Task

if TYPE_CHECKING:
    from ._http import HttpTransport


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    moment = _dt.datetime.fromtimestamp(ts, _dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


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
        next_run_at=_ts(d.get("nextRun")),
        last_run_at=_ts(d.get("lastRun")),
        last_run_id=d.get("lastRunId"),
        created_at=_ts(d.get("createdAt")) or 0.0,
        updated_at=_ts(d.get("updatedAt")) or 0.0,
    )


def _path(schedule_id: str, action: str = "") -> str:
    from urllib.parse import quote

    return f"/api/v1/schedules/{quote(schedule_id, safe='')}{action}"


class ScheduleMethods:
    """``Client``'s schedule calls, over the database or over HTTP."""

    env: str
    _http: HttpTransport | None

    def _ready(self) -> ScheduleStore:
        raise NotImplementedError

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
        if self._http is not None:
            body = {"task": task_id_of(task), "cron": cron, "timezone": timezone,
                    "externalId": external_id, "deduplicationKey": deduplication_key}
            return schedule_from_json(self._http.request(
                "POST", "/api/v1/schedules",
                json={k: v for k, v in body.items() if v is not None},
            ))
        return create(self._ready(), self.env, task=task, cron=cron, timezone=timezone,
                      external_id=external_id, deduplication_key=deduplication_key)[0]

    def retrieve_schedule(self, schedule_id: str) -> Schedule:
        if self._http is not None:
            return schedule_from_json(self._http.request("GET", _path(schedule_id)))
        return get(self._ready(), self.env, schedule_id)

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
        if self._http is not None:
            params: dict[str, Any] = {"page": page, "perPage": per_page}
            for name, value in (("task", None if task is None else task_id_of(task)),
                                ("externalId", external_id), ("type", type),
                                ("active", None if active is None else str(active).lower())):
                if value is not None:
                    params[name] = value
            out = self._http.request("GET", "/api/v1/schedules", params=params)
            return [schedule_from_json(d) for d in out["data"]]
        rows, _ = self._ready().list_schedules(
            self.env,
            task_id=None if task is None else task_id_of(task),
            external_id=external_id,
            type=type,
            active=active,
            limit=per_page,
            offset=(max(page, 1) - 1) * per_page,
        )
        return rows

    def update_schedule(
        self,
        schedule_id: str,
        *,
        task: Task[Any, Any] | str | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        external_id: str | None = UNSET,
    ) -> Schedule:
        if self._http is not None:
            body: dict[str, Any] = {"task": None if task is None else task_id_of(task),
                                    "cron": cron, "timezone": timezone}
            body = {k: v for k, v in body.items() if v is not None}
            if external_id is not UNSET:
                body["externalId"] = external_id
            return schedule_from_json(self._http.request("PUT", _path(schedule_id), json=body))
        return update(self._ready(), self.env, schedule_id, task=task, cron=cron,
                      timezone=timezone, external_id=external_id)

    def activate_schedule(self, schedule_id: str) -> Schedule:
        if self._http is not None:
            return schedule_from_json(
                self._http.request("POST", _path(schedule_id, "/activate"))
            )
        return set_active(self._ready(), self.env, schedule_id, True)

    def deactivate_schedule(self, schedule_id: str) -> Schedule:
        if self._http is not None:
            return schedule_from_json(
                self._http.request("POST", _path(schedule_id, "/deactivate"))
            )
        return set_active(self._ready(), self.env, schedule_id, False)

    def delete_schedule(self, schedule_id: str) -> Schedule:
        if self._http is not None:
            return schedule_from_json(self._http.request("DELETE", _path(schedule_id)))
        return delete(self._ready(), self.env, schedule_id)


class AsyncScheduleMethods:
    """``AsyncClient``'s schedule calls: ``ScheduleMethods`` in a thread."""

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def create_schedule(self, task: Task[Any, Any] | str, cron: str, **kw: Any) -> Schedule:
        s: Schedule = await self._call("create_schedule", task, cron, **kw)
        return s

    async def retrieve_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._call("retrieve_schedule", schedule_id)
        return s

    async def list_schedules(self, **filters: Any) -> list[Schedule]:
        out: list[Schedule] = await self._call("list_schedules", **filters)
        return out

    async def update_schedule(self, schedule_id: str, **changes: Any) -> Schedule:
        s: Schedule = await self._call("update_schedule", schedule_id, **changes)
        return s

    async def activate_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._call("activate_schedule", schedule_id)
        return s

    async def deactivate_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._call("deactivate_schedule", schedule_id)
        return s

    async def delete_schedule(self, schedule_id: str) -> Schedule:
        s: Schedule = await self._call("delete_schedule", schedule_id)
        return s
