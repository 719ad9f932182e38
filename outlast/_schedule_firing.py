"""Firing due cron slots: where C6 (each slot fires exactly once) is computed.

Firing reads the due schedules, works out for each the slot to fire, the payload and the
next slot, and hands the store a batch that it commits in one transaction: a compare and
set on the schedule's next slot plus a ``(schedule_id, slot)`` primary key, in the
transaction that inserts the run. So any number of schedulers (every worker and server
runs one, see ``scheduler.py``) fire each slot exactly once, with no leader to elect.

Downtime policy: when the due slot is in the past, only the latest slot at or before now
fires, once; the ones between are skipped. DST policy: see ``outlast/cron.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from . import _serde
from . import cron as _cron
from ._schedule_client import iso
from ._trigger import NO_OPTIONS, REGISTRY, published_run
from .store.base import Schedule, ScheduleFire, ScheduleStore, TaskDef

log = logging.getLogger(__name__)

UPCOMING = 5  # upcoming slots passed to each run


def fire_due(
    store: ScheduleStore,
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
    store: ScheduleStore, s: Schedule, now: float, defs: dict[tuple[str, str], TaskDef | None]
) -> ScheduleFire | None:
    try:
        return _prepare_fire(store, s, now, defs)
    except Exception:
        # One broken schedule (a zone gone from tzdata, say) must not stall the others.
        log.exception("schedule %s cannot fire; skipped", s.id, extra={"schedule_id": s.id})
        return None


def _prepare_fire(
    store: ScheduleStore, s: Schedule, now: float, defs: dict[tuple[str, str], TaskDef | None]
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
