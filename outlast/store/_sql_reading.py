"""Reading runs, their journal and events: the SQL store's read side for the API,
dashboard and clients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._serde import loads
from ..runs import JournalEntry, Run, RunEvent
from ._rows import (
    BY_ID_DESC,
    _journal_entry,
    id_bound,
    run_from_row,
    status_clause,
)
from ._sql_core import SqlCore


class ReadingMixin(SqlCore):
    # -- reading --------------------------------------------------------------------------
    def get_run(self, env: str, run_id: str) -> Run | None:
        with self._transaction() as tx:
            rows = tx.q("get_run", env=env, id=run_id)
        return run_from_row(rows[0]) if rows else None

    def get_runs(self, env: str, run_ids: Sequence[str]) -> list[Run]:
        if not run_ids:
            return []
        with self._transaction() as tx:
            rows = tx.q("get_runs", env=env, ids=self._list(list(run_ids)))
        by_id = {r["id"]: run_from_row(r) for r in rows}
        return [by_id[i] for i in run_ids if i in by_id]

    def list_runs(
        self,
        env: str,
        *,
        status: Sequence[str] | None = None,
        task_id: str | None = None,
        tag: str | None = None,
        queue: str | None = None,
        created_from: float | None = None,
        created_to: float | None = None,
        search: str | None = None,
        limit: int = 50,
        before: str | None = None,
        parent_id: str | None = None,
    ) -> list[Run]:
        # Built here rather than in queries.sql: each filter adds a clause, and every
        # clause is a bound parameter; ids are time-sortable, so id order is creation order.
        where = ["r.env = :env"]
        params: dict[str, Any] = {"env": env, "limit": max(1, min(limit, 1000))}
        if status:
            where.append(status_clause([str(s) for s in status], params))
        if task_id:
            where.append("r.task_id = :task_id")
            params["task_id"] = task_id
        if queue:
            where.append("r.queue = :queue")
            params["queue"] = queue
        if tag:
            where.append(
                "r.id IN (SELECT t.run_id FROM run_tags t WHERE t.env = :env AND t.tag = :tag)"
            )
            params["tag"] = tag
        if created_from is not None:
            where.append("r.created_at >= :created_from")
            params["created_from"] = created_from
        if created_to is not None:
            where.append("r.created_at <= :created_to")
            params["created_to"] = created_to
        if parent_id:
            where.append("r.parent_id = :parent_id")
            params["parent_id"] = parent_id
        if search:
            where.append("(r.id = :search OR r.idempotency_key = :search)")
            params["search"] = search
        # A list of live or failed runs only goes by runs_env_status_live (env, status,
        # id) in id order; any other by the id's key (ID_KEY): the same order.
        by_key = not status or "COMPLETED" in {str(s) for s in status}
        if before:
            where.append(id_bound("<", "before") if by_key else "r.id < :before")
            params["before"] = before
        order = BY_ID_DESC if by_key else "ORDER BY r.id DESC"
        sql = f"SELECT r.* FROM runs r WHERE {' AND '.join(where)} {order} LIMIT :limit"
        with self._transaction() as tx:
            rows = self._raw(tx, sql, params)
        return [run_from_row(r) for r in rows]

    def journal(self, run_id: str) -> list[JournalEntry]:
        with self._transaction() as tx:
            return [_journal_entry(r) for r in tx.q("journal", run_id=run_id)]

    def events(self, run_id: str, after_id: int = 0) -> list[RunEvent]:
        with self._transaction() as tx:
            rows = tx.q("events", run_id=run_id, after_id=after_id)
        return [
            RunEvent(
                id=r["id"],
                run_id=r["run_id"],
                ts=r["ts"],
                kind=r["kind"],
                attempt=r["attempt"],
                level=r["level"],
                message=r["message"],
                data=loads(r["data"]),
                active_seconds=r["active_seconds"],
            )
            for r in rows
        ]

    def count_runs(self, env: str) -> dict[str, dict[str, int]]:
        with self._transaction() as tx:
            rows = tx.q("count_runs", env=env)
        counts: dict[str, dict[str, int]] = {}
        for r in rows:
            counts.setdefault(r["task_id"], {})[r["status"]] = int(r["n"])
        return counts

