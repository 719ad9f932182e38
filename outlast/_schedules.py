"""Cron schedules at runtime: defining them, keeping declarative ones in step with the
code, and firing their slots.

Every slot is computed here (``outlast.cron``) from the store's clock and kept by the
store. Firing reads the due schedules, works out for each the slot to fire, the payload
and the next slot, and hands the store a batch that it commits in one transaction: a
compare and set on the schedule's next slot plus a ``(schedule_id, slot)`` primary key,
in the transaction that inserts the run. So any number of schedulers (every worker and
server runs one) fire each slot exactly once, with no leader to elect (C6).

Downtime policy: when the due slot is in the past, only the latest slot at or before now
fires, once; the ones between are skipped. DST policy: see ``outlast/cron.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import _serde
from . import cron as _cron
from ._errors import InvalidState, ScheduleNotFound, UnknownTask, ValidationError
from ._ids import new_id
from ._trigger import NO_OPTIONS, REGISTRY, published_run
from .store.base import Schedule, ScheduleFire, Store, TaskDef
from .tasks import Task

if TYPE_CHECKING:
    from ._http import HttpTransport

log = logging.getLogger(__name__)

DECLARATIVE = "DECLARATIVE"
IMPERATIVE = "IMPERATIVE"
UPCOMING = 5  # upcoming slots passed to each run
_UNSET: Any = object()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    moment = _dt.datetime.fromtimestamp(ts, _dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _text(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 512 or "\x00" in value:
        raise ValidationError(f"{field} is a string of 1 to 512 characters (no NUL)",
                              field=field)
    return value


def _task_id(task: Task[Any, Any] | str) -> str:
    return task.id if isinstance(task, Task) else str(task)


def _check_task(store: Store, env: str, task_id: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][\w.:-]{0,127}", task_id):
        raise ValidationError(f"task {task_id!r} is not a task id", field="task")
    if task_id not in REGISTRY and store.get_task(env, task_id) is None:
        raise UnknownTask(
            f"no task {task_id!r} in environment {env!r}: import the module that defines "
            "it, or start a worker that serves it",
            field="task",
        )


def first_slot(expression: str, timezone: str | None, now: float) -> tuple[str, str, float | None]:
    """Validate a cron and zone: (normalized expression, zone name, first slot after now)."""
    c = _cron.parse(expression)
    tz = _cron.zone(timezone)
    return c.expression, tz.key, _cron.next_slot(c, tz, now)


# -- defining schedules (the database side of Client's methods, the API and the CLI) ---------


def get(store: Store, env: str, schedule_id: str) -> Schedule:
    s = store.get_schedule(env, schedule_id)
    if s is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r} in environment {env!r}",
                               field="id")
    return s


def create(
    store: Store,
    env: str,
    *,
    task: Task[Any, Any] | str,
    cron: str,
    timezone: str | None = None,
    external_id: str | None = None,
    deduplication_key: str | None = None,
) -> tuple[Schedule, bool]:
    """Create an imperative schedule, or update the one with this deduplication key.
    Returns it and whether it was created."""
    task_id = _task_id(task)
    expression, zone, _ = first_slot(cron, timezone, store.now())
    external_id = _text(external_id, "external_id")
    deduplication_key = _text(deduplication_key, "deduplication_key")
    _check_task(store, env, task_id)
    for _ in range(5):
        if deduplication_key is not None:
            found = store.get_schedule(env, deduplication_key=deduplication_key)
            if found is not None:
                return update(store, env, found.id, task=task_id, cron=expression,
                              timezone=zone, external_id=external_id), False
        now = store.now()
        new = Schedule(
            id=new_id("sched"),
            env=env,
            task_id=task_id,
            type=IMPERATIVE,
            cron=expression,
            timezone=zone,
            external_id=external_id,
            deduplication_key=deduplication_key,
            next_run_at=first_slot(expression, zone, now)[2],
            created_at=now,
            updated_at=now,
        )
        if store.insert_schedule(new):
            return get(store, env, new.id), True
        # A concurrent create took the key first: update that one instead.
    raise InvalidState(f"could not create the schedule {deduplication_key!r}; try again")


def update(
    store: Store,
    env: str,
    schedule_id: str,
    *,
    task: Task[Any, Any] | str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    external_id: str | None = _UNSET,
) -> Schedule:
    """Change an imperative schedule. A new cron or zone starts from the next slot after
    now; an unchanged one keeps its next slot."""
    s = get(store, env, schedule_id)
    if s.type == DECLARATIVE:
        raise InvalidState(
            f"schedule {s.id!r} is declared by @task(cron=...) on {s.task_id!r}: change it "
            "in the code, or deactivate it"
        )
    task_id = _task_id(task) if task is not None else s.task_id
    expression, zone, following = first_slot(
        cron if cron is not None else s.cron,
        timezone if timezone is not None else s.timezone,
        store.now(),
    )
    if task_id != s.task_id:
        _check_task(store, env, task_id)
    # An unchanged expression keeps its next slot. Should a fire move it on meanwhile,
    # this write puts it back, and the slot key refuses to fire that slot again (C6).
    same_slots = expression == s.cron and zone == s.timezone
    changed = dataclasses.replace(
        s,
        task_id=task_id,
        cron=expression,
        timezone=zone,
        external_id=s.external_id if external_id is _UNSET else _text(external_id, "external_id"),
        next_run_at=(s.next_run_at if same_slots else following) if s.active else None,
    )
    saved = store.save_schedule(changed)
    if saved is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r}", field="id")
    return saved


def set_active(store: Store, env: str, schedule_id: str, active: bool) -> Schedule:
    """Activate (from the next slot after now: no catching up) or deactivate."""
    s = get(store, env, schedule_id)
    if s.active == active:
        return s
    following = first_slot(s.cron, s.timezone, store.now())[2] if active else None
    saved = store.save_schedule(dataclasses.replace(s, active=active, next_run_at=following))
    if saved is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r}", field="id")
    return saved


def delete(store: Store, env: str, schedule_id: str) -> Schedule:
    s = get(store, env, schedule_id)
    if s.type == DECLARATIVE:
        raise InvalidState(
            f"schedule {s.id!r} is declared by @task(cron=...) on {s.task_id!r}: remove "
            "cron= from the task (its next worker start deactivates it), or deactivate it"
        )
    if not store.delete_schedule(env, schedule_id):
        raise ScheduleNotFound(f"no schedule {schedule_id!r}", field="id")
    return s


def sync_declarative(store: Store, env: str, tasks: Mapping[str, Task[Any, Any]]) -> None:
    """At worker start: create or update the schedule of each task with ``cron=``, and
    deactivate those of served tasks that no longer have one. A bad cron stops the start
    with an error naming the task and the field."""
    now = store.now()
    declared = []
    for t in tasks.values():
        if t.cron is None:
            continue
        try:
            expression, zone, following = first_slot(t.cron, t.timezone, now)
        except _cron.CronError as exc:
            raise _cron.CronError(f"task {t.id!r}: {exc.message}",
                                 cron_field=exc.cron_field) from None
        except ValidationError as exc:
            raise ValidationError(f"task {t.id!r}: {exc.message}", field=exc.field) from None
        declared.append(
            Schedule(
                id=new_id("sched"),
                env=env,
                task_id=t.id,
                type=DECLARATIVE,
                cron=expression,
                timezone=zone,
                next_run_at=following,
                created_at=now,
                updated_at=now,
            )
        )
    store.sync_declarative_schedules(env, [t.id for t in tasks.values()], declared)


# -- firing -----------------------------------------------------------------------------------


def fire_due(
    store: Store,
    *,
    limit: int = 500,
    rounds: int = 10,
    defs: dict[tuple[str, str], TaskDef | None] | None = None,
) -> int:
    """Fire every due slot; returns how many runs this process started. Safe to run in
    any number of processes at once: the others' duplicates are refused by the store.
    ``defs`` caches published task definitions between calls (the caller expires it)."""
    fired = 0
    defs = {} if defs is None else defs
    for _ in range(rounds):
        now = store.now()
        due = store.due_schedules(now, limit)
        fires = [f for f in (_fire(store, s, now, defs) for s in due) if f is not None]
        fired += sum(1 for run_id in store.fire_schedules(fires) if run_id)
        if len(due) < limit:
            break
    return fired


def _fire(
    store: Store, s: Schedule, now: float, defs: dict[tuple[str, str], TaskDef | None]
) -> ScheduleFire | None:
    try:
        return _prepare_fire(store, s, now, defs)
    except Exception:
        # One broken schedule (a zone gone from tzdata, say) must not stall the others.
        log.exception("schedule %s cannot fire; skipped", s.id, extra={"schedule_id": s.id})
        return None


def _prepare_fire(
    store: Store, s: Schedule, now: float, defs: dict[tuple[str, str], TaskDef | None]
) -> ScheduleFire:
    assert s.next_run_at is not None
    c = _cron.parse(s.cron)
    tz = _cron.zone(s.timezone)
    slot = _cron.latest_slot(c, tz, now, s.next_run_at)
    upcoming = _cron.upcoming(c, tz, slot, UPCOMING)
    payload = {
        "type": s.type,
        "timestamp": iso(slot),
        "lastTimestamp": iso(s.last_run_at),
        "timezone": s.timezone,
        "scheduleId": s.id,
        "externalId": s.external_id,
        "upcoming": [iso(u) for u in upcoming],
    }
    key = (s.env, s.task_id)
    if key not in defs:
        defs[key] = store.get_task(s.env, s.task_id)
    return ScheduleFire(
        schedule_id=s.id,
        expected_next=s.next_run_at,
        slot=round(slot),
        next_run_at=upcoming[0] if upcoming else None,
        run=_run(s, _serde.dumps(payload), defs[key]),
    )


def _run(s: Schedule, payload: str, published: TaskDef | None) -> Any:
    """The slot's run, with the task's defaults as its workers published them (a server
    firing schedules need not import task code)."""
    if published is None:
        local = REGISTRY.get(s.task_id)
        published = local.definition() if local is not None else TaskDef(
            id=s.task_id, queue=f"task/{s.task_id}", payload_schema={}, spec={}
        )
    return published_run(published, s.env, payload, NO_OPTIONS)


# -- JSON, in the Trigger.dev shape -----------------------------------------------------------


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


# -- client methods (mixed into Client and AsyncClient) ---------------------------------------


def _path(schedule_id: str, action: str = "") -> str:
    from urllib.parse import quote

    return f"/api/v1/schedules/{quote(schedule_id, safe='')}{action}"


class ScheduleMethods:
    """``Client``'s schedule calls, over the database or over HTTP."""

    env: str
    _http: HttpTransport | None

    def _ready(self) -> Store:
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
            body = {"task": _task_id(task), "cron": cron, "timezone": timezone,
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
            for name, value in (("task", None if task is None else _task_id(task)),
                                ("externalId", external_id), ("type", type),
                                ("active", None if active is None else str(active).lower())):
                if value is not None:
                    params[name] = value
            out = self._http.request("GET", "/api/v1/schedules", params=params)
            return [schedule_from_json(d) for d in out["data"]]
        rows, _ = self._ready().list_schedules(
            self.env,
            task_id=None if task is None else _task_id(task),
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
        external_id: str | None = _UNSET,
    ) -> Schedule:
        if self._http is not None:
            body: dict[str, Any] = {"task": None if task is None else _task_id(task),
                                    "cron": cron, "timezone": timezone}
            body = {k: v for k, v in body.items() if v is not None}
            if external_id is not _UNSET:
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
