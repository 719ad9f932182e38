"""Defining schedules against a store: create, change, activate, deactivate, delete, and
keep the declarative ones (``@task(cron=...)``) in step with the code at worker start.

This is the database side of ``Client``'s schedule calls, the HTTP API and the CLI. Every
slot is computed from ``outlast.cron`` and the store's clock; the store only keeps them.
Firing due slots is ``_schedule_firing``; the wire shape and the client calls are
``_schedule_client``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import cron as _cron
from ._errors import InvalidState, ScheduleNotFound, UnknownTask, ValidationError
from ._ids import new_id
from ._trigger import REGISTRY
from .store.base import Schedule, ScheduleStore

if TYPE_CHECKING:
    from .tasks import Task

DECLARATIVE = "DECLARATIVE"
IMPERATIVE = "IMPERATIVE"
UNSET: Any = object()  # external_id not given (None clears it)


def _text(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 512 or "\x00" in value:
        raise ValidationError(f"{field} is a string of 1 to 512 characters (no NUL)",
                              field=field)
    return value


def task_id_of(task: Task[Any, Any] | str) -> str:
    return task if isinstance(task, str) else task.id


def _check_task(store: ScheduleStore, env: str, task_id: str) -> None:
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


def get(store: ScheduleStore, env: str, schedule_id: str) -> Schedule:
    s = store.get_schedule(env, schedule_id)
    if s is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r} in environment {env!r}",
                               field="id")
    return s


def create(
    store: ScheduleStore,
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
    task_id = task_id_of(task)
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
    store: ScheduleStore,
    env: str,
    schedule_id: str,
    *,
    task: Task[Any, Any] | str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    external_id: str | None = UNSET,
) -> Schedule:
    """Change an imperative schedule. A new cron or zone starts from the next slot after
    now; an unchanged one keeps its next slot."""
    s = get(store, env, schedule_id)
    if s.type == DECLARATIVE:
        raise InvalidState(
            f"schedule {s.id!r} is declared by @task(cron=...) on {s.task_id!r}: change it "
            "in the code, or deactivate it"
        )
    task_id = task_id_of(task) if task is not None else s.task_id
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
        external_id=s.external_id if external_id is UNSET else _text(external_id, "external_id"),
        next_run_at=(s.next_run_at if same_slots else following) if s.active else None,
    )
    saved = store.save_schedule(changed)
    if saved is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r}", field="id")
    return saved


def set_active(store: ScheduleStore, env: str, schedule_id: str, active: bool) -> Schedule:
    """Activate (from the next slot after now: no catching up) or deactivate."""
    s = get(store, env, schedule_id)
    if s.active == active:
        return s
    following = first_slot(s.cron, s.timezone, store.now())[2] if active else None
    saved = store.save_schedule(dataclasses.replace(s, active=active, next_run_at=following))
    if saved is None:
        raise ScheduleNotFound(f"no schedule {schedule_id!r}", field="id")
    return saved


def delete(store: ScheduleStore, env: str, schedule_id: str) -> Schedule:
    s = get(store, env, schedule_id)
    if s.type == DECLARATIVE:
        raise InvalidState(
            f"schedule {s.id!r} is declared by @task(cron=...) on {s.task_id!r}: remove "
            "cron= from the task (its next worker start deactivates it), or deactivate it"
        )
    if not store.delete_schedule(env, schedule_id):
        raise ScheduleNotFound(f"no schedule {schedule_id!r}", field="id")
    return s


def sync_declarative(store: ScheduleStore, env: str, tasks: Mapping[str, Task[Any, Any]]) -> None:
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
