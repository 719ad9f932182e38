"""Store parts for cron schedules: definitions, declarative sync, and firing slots.

The store knows nothing of cron: ``outlast/_schedule_crud.py`` and ``_schedule_firing.py``
compute every slot and next slot, and these methods keep them. Firing is where C6 lives
(``fire_schedules``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from ._sql_core import SqlCore
from .base import Schedule, ScheduleFire, ScheduleSlot

Row = dict[str, Any]


def schedule_from_row(row: Row) -> Schedule:
    return Schedule(
        id=row["id"],
        env=row["env"],
        task_id=row["task_id"],
        type=row["type"],
        cron=row["cron"],
        timezone=row["timezone"],
        external_id=row["external_id"],
        deduplication_key=row["deduplication_key"],
        active=bool(row["active"]),
        next_run_at=row["next_run_at"],
        last_run_at=row["last_run_at"],
        last_run_id=row["last_run_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class SchedulesMixin(SqlCore):
    """Mixed into SqlStore; relies on its ``_transaction``, ``_insert_runs``, ``now`` and
    ``wake_local``."""

    def insert_schedule(self, schedule: Schedule) -> bool:
        with self._transaction() as tx:
            return bool(tx.q("insert_schedule", **self._schedule_params(schedule), in_code=0))

    def _schedule_params(self, s: Schedule) -> dict[str, Any]:
        return {
            "id": s.id,
            "env": s.env,
            "task_id": s.task_id,
            "type": s.type,
            "cron": s.cron,
            "timezone": s.timezone,
            "external_id": s.external_id,
            "deduplication_key": s.deduplication_key,
            "active": 1 if s.active else 0,
            "next_run_at": s.next_run_at,
            "now": self.now(),
        }

    def save_schedule(self, schedule: Schedule) -> Schedule | None:
        params = self._schedule_params(schedule)
        del params["type"], params["deduplication_key"]
        with self._transaction() as tx:
            rows = tx.q("save_schedule", **params)
        return schedule_from_row(rows[0]) if rows else None

    def get_schedule(
        self, env: str, schedule_id: str | None = None, *, deduplication_key: str | None = None
    ) -> Schedule | None:
        with self._transaction() as tx:
            if schedule_id is not None:
                rows = tx.q("get_schedule", env=env, id=schedule_id)
            else:
                rows = tx.q("get_schedule_by_key", env=env, deduplication_key=deduplication_key)
        return schedule_from_row(rows[0]) if rows else None

    def list_schedules(
        self,
        env: str,
        *,
        task_id: str | None = None,
        external_id: str | None = None,
        type: str | None = None,
        active: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Schedule], int]:
        where = {
            "env": env,
            "task_id": task_id,
            "external_id": external_id,
            "type": type,
            "active": None if active is None else int(active),
        }
        with self._transaction() as tx:
            rows = tx.q("list_schedules", **where, limit=max(1, min(limit, 1000)),
                        offset=max(0, offset))
            total = int(tx.q("count_schedules", **where)[0]["n"])
        return [schedule_from_row(r) for r in rows], total

    def delete_schedule(self, env: str, schedule_id: str) -> bool:
        with self._transaction() as tx:
            if not tx.q("delete_schedule", env=env, id=schedule_id):
                return False
            tx.x("delete_schedule_slots", id=schedule_id)
        return True

    def sync_declarative_schedules(
        self, env: str, served: Sequence[str], declared: Sequence[Schedule]
    ) -> None:
        now = self.now()
        with self._transaction() as tx:
            existing = {
                r["task_id"]: r for r in tx.q("declarative_schedules", env=env)
            }
            for s in declared:
                row = existing.get(s.task_id)
                if row is None:
                    # Two workers starting at once both get here; the unique index keeps one.
                    tx.q("insert_schedule", **self._schedule_params(s), in_code=1)
                    continue
                changed = row["cron"] != s.cron or row["timezone"] != s.timezone
                if not changed and row["in_code"]:
                    continue  # as declared: keep its next slot, and a pause set by hand
                active = bool(row["active"]) or not row["in_code"]
                tx.x(
                    "declare_schedule",
                    env=env,
                    id=row["id"],
                    cron=s.cron,
                    timezone=s.timezone,
                    active=1 if active else 0,
                    next_run_at=s.next_run_at if active else None,
                    now=now,
                )
            names = {s.task_id for s in declared}
            for task_id in sorted(set(served) - names):
                if task_id in existing:
                    tx.x("undeclare_schedule", env=env, task_id=task_id, now=now)

    def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        with self._transaction() as tx:
            rows = tx.q("due_schedules", now=now, limit=limit)
        return [schedule_from_row(r) for r in rows]

    def fire_schedules(self, fires: Sequence[ScheduleFire]) -> list[str | None]:
        if not fires:
            return []
        now = self.now()
        out: dict[int, str | None] = {}
        runs = []
        # One lock order for every scheduler (by schedule id), so concurrent fires queue
        # behind each other on PostgreSQL instead of deadlocking.
        order = sorted(range(len(fires)), key=lambda i: (fires[i].schedule_id, fires[i].slot))
        with self._transaction() as tx:
            for i in order:
                f = fires[i]
                out[i] = None
                advanced = tx.q(
                    "advance_schedule",
                    id=f.schedule_id,
                    expected=f.expected_next,
                    next_run_at=f.next_run_at,
                )
                if not advanced:
                    continue  # another scheduler fired it, or it was changed meanwhile
                claimed = tx.q(
                    "insert_schedule_slot",
                    schedule_id=f.schedule_id,
                    slot=f.slot,
                    run_id=f.run.id,
                    now=now,
                )
                if not claimed:
                    continue  # this slot fired already (C6): move on, fire nothing
                tx.x("schedule_fired", id=f.schedule_id, slot=f.slot, run_id=f.run.id)
                runs.append(f.run)
                out[i] = f.run.id
            if runs:
                self._insert_runs(tx, runs, now)
        if runs:
            self.wake_local()
        return [out[i] for i in range(len(fires))]

    def schedule_slots(self, schedule_id: str, limit: int = 50) -> list[ScheduleSlot]:
        with self._transaction() as tx:
            rows = tx.q("schedule_slots", id=schedule_id, limit=limit)
        return [cast(ScheduleSlot, dict(r)) for r in rows]

    def prune_schedule_slots(self, older_than: float = 7 * 24 * 3600.0) -> int:
        with self._transaction() as tx:
            return int(tx.x("prune_schedule_slots", before=self.now() - older_than))
