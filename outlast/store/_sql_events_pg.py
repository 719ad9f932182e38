"""PostgreSQL's hooks for the events part: a batch's events and deliveries in one
statement each (``unnest`` over column arrays), where SQLite inserts row by row at no
round-trip cost. Mixed into ``PostgresStore`` ahead of ``SqlStore``."""

from __future__ import annotations

from typing import Any

from ._rows import Tx
from ._sql_events import EventsMixin


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


class PgEventsMixin(EventsMixin):
    def _insert_event_rows(self, tx: Tx, rows: list[dict[str, Any]]) -> dict[str, int]:
        found = tx.q("ev_insert_unnest", **_columns(rows))
        return {r["id"]: int(r["seq"]) for r in found}

    def _insert_deliveries(self, tx: Tx, rows: list[dict[str, Any]]) -> None:
        tx.x("ev_insert_deliveries_unnest", **_columns([{**r, "replay": 0} for r in rows]))
