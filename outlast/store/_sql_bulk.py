"""Store parts for bulk actions: the matching set, the batches, the cursor (see
``_bulk_base.py`` for the model; ``outlast/_bulk.py`` drives it)."""

from __future__ import annotations

import abc
import json
from typing import Any

from .._errors import BulkActionNotFound
from ..runs import FINAL_STATUSES, Run
from ._bulk_base import BulkAction, BulkBatch, BulkFilter
from ._rows import BY_ID_ASC, BY_ID_DESC, Row, Tx, id_bound, run_from_row, status_clause
from ._sql_core import SqlCore


def filter_sql(env: str, f: BulkFilter) -> tuple[list[str], dict[str, Any]]:
    """The WHERE clauses (over ``runs r``) and parameters of a filter. Built here rather
    than in queries.sql: each filter adds a clause, every value a bound parameter."""
    where = ["r.env = :env"]
    params: dict[str, Any] = {"env": env}
    if f.version is not None:  # the task code version the runs are locked to (C11)
        where.append("r.version = :version")
        params["version"] = f.version
    if f.status:
        where.append(status_clause(list(f.status), params))
    if f.task_id:
        where.append("r.task_id = :task_id")
        params["task_id"] = f.task_id
    if f.queue:
        where.append("r.queue = :queue")
        params["queue"] = f.queue
    if f.tag:
        where.append("r.id IN (SELECT t.run_id FROM run_tags t WHERE t.env = :env "
                     "AND t.tag = :tag)")
        params["tag"] = f.tag
    if f.created_from is not None:
        where.append("r.created_at >= :created_from")
        params["created_from"] = f.created_from
    if f.created_to is not None:
        where.append("r.created_at <= :created_to")
        params["created_to"] = f.created_to
    if f.search:
        where.append("(r.id = :search OR r.idempotency_key = :search)")
        params["search"] = f.search
    return where, params


def _by_key(f: BulkFilter) -> bool:
    """Whether the filter's runs are walked by the id's key (runs_env_idp and
    runs_env_task_idp) rather than by id (runs_env_status_live, for live or failed runs
    only): see ``_rows.ID_KEY``. Both are id order."""
    return not f.status or "COMPLETED" in {str(s) for s in f.status}


def bulk_from_row(row: Row) -> BulkAction:
    return BulkAction(
        id=row["id"],
        env=row["env"],
        action=row["action"],
        filter=BulkFilter.from_json(json.loads(row["filter"])),
        bound_id=row["bound_id"],
        cursor=row["cursor"],
        status=row["status"],
        total=int(row["total"]),
        processed=int(row["processed"]),
        succeeded=int(row["succeeded"]),
        requested=int(row["requested"]),
        skipped=int(row["skipped"]),
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


class BulkMixin(SqlCore):
    """The bulk action part of the SQL store (see ``_bulk_base.py``)."""

    @abc.abstractmethod
    def _cancel_tree(self, tx: Tx, run_id: str, now: float, ended: list[str]) -> None:
        """Cancel a run and its waiting children (``SqlStore``'s, shared with cancel)."""

    def count_bulk_matches(self, env: str, f: BulkFilter) -> int:
        where, params = filter_sql(env, f)
        with self._transaction() as tx:
            rows = self._raw(tx, f"SELECT COUNT(*) AS n FROM runs r WHERE {' AND '.join(where)}",
                             params)
        return int(rows[0]["n"])

    def bulk_sample(self, env: str, f: BulkFilter, limit: int) -> list[Run]:
        where, params = filter_sql(env, f)
        params["limit"] = max(1, min(limit, 1000))
        order = BY_ID_DESC if _by_key(f) else "ORDER BY r.id DESC"
        sql = f"SELECT r.* FROM runs r WHERE {' AND '.join(where)} {order} LIMIT :limit"
        with self._transaction() as tx:
            rows = self._raw(tx, sql, params)
        return [run_from_row(r) for r in rows]

    def create_bulk_action(self, env: str, bulk_id: str, action: str, f: BulkFilter
                           ) -> BulkAction:
        where, params = filter_sql(env, f)
        now = self.now()
        with self._transaction() as tx:
            newest = tx.q("newest_run_id_by_key", env=env)
            bound = newest[0]["id"] if newest else ""
            params["bound"] = bound
            at_most = id_bound("<=", "bound") if _by_key(f) else "r.id <= :bound"
            total = self._raw(tx, "SELECT COUNT(*) AS n FROM runs r WHERE "
                              + " AND ".join([*where, at_most]), params)[0]["n"]
            tx.x("insert_bulk_action", id=bulk_id, env=env, action=action,
                 filter=json.dumps(f.to_json()), bound_id=bound, total=int(total), now=now)
            row = tx.q("get_bulk_action", env=env, id=bulk_id)[0]
        return bulk_from_row(row)

    def get_bulk_action(self, env: str, bulk_id: str) -> BulkAction | None:
        with self._transaction() as tx:
            rows = tx.q("get_bulk_action", env=env, id=bulk_id)
        return bulk_from_row(rows[0]) if rows else None

    def list_bulk_actions(self, env: str, limit: int = 20) -> list[BulkAction]:
        with self._transaction() as tx:
            rows = tx.q("list_bulk_actions", env=env, limit=max(1, min(limit, 1000)))
        return [bulk_from_row(r) for r in rows]

    def bulk_candidates(self, bulk: BulkAction, limit: int) -> list[Run]:
        where, params = filter_sql(bulk.env, bulk.filter)
        if _by_key(bulk.filter):
            where += [id_bound(">", "cursor"), id_bound("<=", "bound")]
            order = BY_ID_ASC
        else:
            where += ["r.id > :cursor", "r.id <= :bound"]
            order = "ORDER BY r.id"
        params.update(cursor=bulk.cursor, bound=bulk.bound_id, limit=max(1, limit))
        sql = f"SELECT r.* FROM runs r WHERE {' AND '.join(where)} {order} LIMIT :limit"
        with self._transaction() as tx:
            rows = self._raw(tx, sql, params)
        return [run_from_row(r) for r in rows]

    def commit_bulk_batch(self, bulk: BulkAction, batch: BulkBatch) -> BulkAction | None:
        now = self.now()
        env, ended = bulk.env, list[str]()
        requested = skipped = 0
        with self._transaction() as tx:
            if not tx.q("advance_bulk_action", env=env, id=bulk.id, expected=bulk.cursor,
                        cursor=batch.last_id, covered=batch.covered, now=now):
                return None
            for run_id in batch.cancel_ids:
                if not tx.q("get_run", env=env, id=run_id):
                    skipped += 1  # pruned since it was read
                    continue
                self._cancel_tree(tx, run_id, now, ended)
                if run_id in ended:
                    continue
                status = tx.q("get_run", env=env, id=run_id)[0]["status"]
                if status in {str(s) for s in FINAL_STATUSES}:
                    skipped += 1  # ended on its own since it was read
                else:
                    requested += 1  # executing: it stops at its next checkpoint
            if batch.replays:
                self._insert_runs(tx, batch.replays, now)
            done_ids = set(ended)
            succeeded = sum(1 for i in batch.cancel_ids if i in done_ids) + len(batch.replays)
            tx.x("count_bulk_batch", env=env, id=bulk.id, succeeded=succeeded,
                 requested=requested, skipped=skipped + batch.skipped,
                 last_error=batch.last_error)
            row = tx.q("get_bulk_action", env=env, id=bulk.id)[0]
        if batch.replays:
            self._ensured.update((r.env, r.queue, r.concurrency_key) for r in batch.replays)
            self.wake_local()
        return bulk_from_row(row)

    def finish_bulk_action(self, env: str, bulk_id: str, status: str) -> BulkAction:
        with self._transaction() as tx:
            tx.x("finish_bulk_action", env=env, id=bulk_id, status=status, now=self.now())
            rows = tx.q("get_bulk_action", env=env, id=bulk_id)
        if not rows:
            raise BulkActionNotFound(f"no bulk action {bulk_id!r} in environment {env!r}",
                                     field="id")
        return bulk_from_row(rows[0])
