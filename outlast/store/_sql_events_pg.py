"""PostgreSQL's hooks for the events part: fewer round trips where SQLite pays none. A
batch's events and deliveries go in one statement each (``unnest`` over column arrays);
a publish of one name locks it and reads the subscribers in one, and a single event is
inserted by the statement that reads the waits for its name. Mixed into
``PostgresStore`` ahead of ``SqlStore``."""

from __future__ import annotations

from typing import Any

from ._events_base import EventWait
from ._rows import Tx, _task_def
from ._sql_events import EventsMixin, _Batch
from ._types import TaskDef


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


class PgEventsMixin(EventsMixin):
    def _lock_and_subscribers(self, tx: Tx, env: str, names: list[str], now: float
                              ) -> list[TaskDef]:
        if len(names) != 1:
            return super()._lock_and_subscribers(tx, env, names, now)
        rows = tx.q("ev_lock_and_subscribers", env=env, name=names[0], now=now)
        return [_task_def(r) for r in rows]

    def _insert_one(self, tx: Tx, batch: _Batch, row: dict[str, Any], name: str
                    ) -> int | None:
        rows = tx.q("ev_insert_one_and_waits", **row, event_name=name)
        if not rows:
            return None
        batch.waits[name] = [
            EventWait(r["waitpoint_id"], r["name"], r["match_path"], r["match_value"], r["expr"])
            for r in rows if r["waitpoint_id"] is not None
        ]
        return int(rows[0]["seq"])

    def _insert_event_rows(self, tx: Tx, rows: list[dict[str, Any]]) -> dict[str, int]:
        found = tx.q("ev_insert_unnest", **_columns(rows))
        return {r["id"]: int(r["seq"]) for r in found}

    def _insert_deliveries(self, tx: Tx, rows: list[dict[str, Any]]) -> None:
        tx.x("ev_insert_deliveries_unnest", **_columns([{**r, "replay": 0} for r in rows]))
