"""Cron schedules from app code, and the payload a scheduled run receives.

Declare a schedule with the task (``@task(cron="0 9 * * MON", timezone="Europe/Paris")``),
or make them at runtime, one per tenant if you like::

    from outlast import schedules

    s = schedules.create(task="cron-digest", cron="0 9 * * MON", timezone="Europe/Paris",
                         external_id="org_42", deduplication_key="digest:org_42")
    schedules.deactivate(s.id)

These calls use the process's default client (OUTLAST_DATABASE_URL, or OUTLAST_API_URL
with OUTLAST_SECRET_KEY); ``Client`` and ``AsyncClient`` have the same calls as methods
(``create_schedule``, ``list_schedules``, …). Each slot fires exactly once however many
schedulers run (C6); see docs/how-to/schedules.md for the DST and downtime policy.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import zoneinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import cron as _cron
from ._schedule_crud import DECLARATIVE, IMPERATIVE
from .store.base import Schedule
from .tasks import Task


class ScheduledPayload(BaseModel):
    """What a scheduled run receives: annotate the task's payload with it.

    ``timestamp`` is the slot being fired (UTC), ``last_timestamp`` the slot this schedule
    fired before it, ``upcoming`` the next five slots. ``local_timestamp`` is the slot on
    the schedule's own clock."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    type: Literal["DECLARATIVE", "IMPERATIVE"] = "IMPERATIVE"
    timestamp: _dt.datetime
    last_timestamp: _dt.datetime | None = Field(None, alias="lastTimestamp")
    timezone: str = "UTC"
    schedule_id: str = Field(alias="scheduleId")
    external_id: str | None = Field(None, alias="externalId")
    upcoming: builtins.list[_dt.datetime] = Field(default_factory=builtins.list)

    @property
    def local_timestamp(self) -> _dt.datetime:
        return self.timestamp.astimezone(zoneinfo.ZoneInfo(self.timezone))


def _client() -> Any:
    from .client import default_client

    return default_client()


def create(
    task: Task[Any, Any] | str,
    cron: str,
    *,
    timezone: str | None = None,
    external_id: str | None = None,
    deduplication_key: str | None = None,
) -> Schedule:
    """Create an imperative schedule. With a ``deduplication_key`` already in use, the
    schedule holding it is updated instead, so creating one twice never duplicates it."""
    s: Schedule = _client().create_schedule(
        task, cron, timezone=timezone, external_id=external_id,
        deduplication_key=deduplication_key,
    )
    return s


def retrieve(schedule_id: str) -> Schedule:
    s: Schedule = _client().retrieve_schedule(schedule_id)
    return s


def list(
    *,
    task: Task[Any, Any] | str | None = None,
    external_id: str | None = None,
    type: str | None = None,
    active: bool | None = None,
    page: int = 1,
    per_page: int = 100,
) -> builtins.list[Schedule]:
    out: builtins.list[Schedule] = _client().list_schedules(
        task=task, external_id=external_id, type=type, active=active, page=page,
        per_page=per_page,
    )
    return out


def update(schedule_id: str, **changes: Any) -> Schedule:
    """Change an imperative schedule: ``task``, ``cron``, ``timezone``, ``external_id``."""
    s: Schedule = _client().update_schedule(schedule_id, **changes)
    return s


def activate(schedule_id: str) -> Schedule:
    """Fire again from the next slot after now (missed slots are not caught up)."""
    s: Schedule = _client().activate_schedule(schedule_id)
    return s


def deactivate(schedule_id: str) -> Schedule:
    s: Schedule = _client().deactivate_schedule(schedule_id)
    return s


def delete(schedule_id: str) -> Schedule:
    s: Schedule = _client().delete_schedule(schedule_id)
    return s


def timezones() -> builtins.list[str]:
    """The IANA time zone names a schedule may use."""
    return _cron.timezones()


def next_runs(
    cron: str,
    timezone: str | None = None,
    count: int = 5,
    after: _dt.datetime | None = None,
) -> builtins.list[_dt.datetime]:
    """The next ``count`` times ``cron`` fires in ``timezone``, as aware datetimes there."""
    c = _cron.parse(cron)
    tz = _cron.zone(timezone)
    start = (after or _dt.datetime.now(_dt.UTC)).timestamp()
    return [_dt.datetime.fromtimestamp(t, tz) for t in _cron.upcoming(c, tz, start, count)]


__all__ = [
    "DECLARATIVE",
    "IMPERATIVE",
    "Schedule",
    "ScheduledPayload",
    "activate",
    "create",
    "deactivate",
    "delete",
    "list",
    "next_runs",
    "retrieve",
    "timezones",
    "update",
]
