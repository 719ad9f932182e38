"""Store parts for retention: policies, and pruning finished runs a bounded batch at a
time (see ``_retention_base.py`` for the model; ``outlast/_retention.py`` drives it).

Why batches of DELETEs and not dropping time partitions: a partition holds runs by when
they were created, but a run may stay unfinished for longer than any retention (a wait of
weeks), a finished child must stay while its root runs, and per-task policies cut across
any time partition; a partitioned ``runs`` table would also need the partition key in
every unique index (the id, idempotency keys). A batch of a few hundred runs deletes in
milliseconds and locks only rows no claim reads (claims lock QUEUED runs and queue rows),
so it never stalls claims; bench/history_bench.py --prune measures it.
"""

from __future__ import annotations

import json
from typing import Any

from .._ids import _time_digits
from ..runs import FINAL_STATUSES
from ._retention_base import PruneRule, RetentionPolicy
from ._rows import ID_KEY, Row, status_clause
from ._sql_core import SqlCore

# Constants, not input: written into the SQL as literals so each dialect plans them.
_FINAL_LIST = sorted(s.value for s in FINAL_STATUSES)
_FINAL = ", ".join(f"'{s}'" for s in _FINAL_LIST)

# Runs whose ids were made after the cutoff (plus this margin for clocks that disagree)
# cannot have finished before it: the id bound lets the scan stop early on an index.
_ID_MARGIN = 3600.0


def _candidates_sql(rule: PruneRule, status: str | None = None) -> tuple[str, dict[str, Any]]:
    """The FROM/WHERE over ``runs r`` of the runs a rule covers (of one final ``status``
    if given). Built here rather than in queries.sql: a rule adds one bound parameter per
    excepted task."""
    bound_ms = int((rule.cutoff + _ID_MARGIN) * 1000) & ((1 << 48) - 1)
    params: dict[str, Any] = {
        "env": rule.env, "cutoff": rule.cutoff, "bound": "run_" + _time_digits(bound_ms),
    }
    where = [
        "r.env = :env",
        f"r.status IN ({_FINAL})" if status is None else status_clause([status], params),
        "r.id < :bound",
        # The same bound on the id's key, which runs_env_idp ranges over (the bound is
        # "run_" and 10 time digits: for every run id the two say the same).
        f"{ID_KEY} < substr(:bound, 5, 12)",
        "r.finished_at < :cutoff",
        # A finished run stays while a child runs, or while its parent or root does
        # (the tree is whole until its root has finished; a pruned one counts as
        # finished). Scalar subqueries, not NOT EXISTS: PostgreSQL would plan those as
        # anti-joins, a scan of all of runs per batch; these are index lookups per row.
        f"COALESCE((SELECT 1 FROM runs c WHERE c.parent_id = r.id "
        f"AND c.status NOT IN ({_FINAL}) LIMIT 1), 0) = 0",
        f"(r.parent_id IS NULL OR COALESCE((SELECT p.status FROM runs p "
        f"WHERE p.id = r.parent_id), 'COMPLETED') IN ({_FINAL}))",
        f"(r.root_id IS NULL OR COALESCE((SELECT p.status FROM runs p "
        f"WHERE p.id = r.root_id), 'COMPLETED') IN ({_FINAL}))",
    ]
    if rule.task_id is not None:
        where.append("r.task_id = :task_id")
        params["task_id"] = rule.task_id
    if rule.except_tasks:
        names = []
        for i, t in enumerate(rule.except_tasks):
            params[f"ex{i}"] = t
            names.append(f":ex{i}")
        where.append(f"r.task_id NOT IN ({', '.join(names)})")
    return "FROM runs r WHERE " + " AND ".join(where), params


def _policy(row: Row) -> RetentionPolicy:
    days = row["days"]
    return RetentionPolicy(
        env=row["env"],
        task_id=row["task_id"] or None,
        days=None if days is None else float(days),
        updated_at=float(row["updated_at"]),
    )


class RetentionMixin(SqlCore):
    """The retention part of the SQL store (see ``_retention_base.py``)."""

    def retention_envs(self) -> list[str]:
        with self._transaction() as tx:
            return sorted(str(r["env"]) for r in tx.q("retention_envs"))

    def retention_policies(self, env: str) -> list[RetentionPolicy]:
        with self._transaction() as tx:
            return [_policy(r) for r in tx.q("retention_policies", env=env)]

    def set_retention_policy(self, env: str, task_id: str | None, days: float | None
                             ) -> RetentionPolicy:
        now = self.now()
        with self._transaction() as tx:
            tx.x("set_retention_policy", env=env, task_id=task_id or "", days=days, now=now)
        return RetentionPolicy(env=env, task_id=task_id or None, days=days, updated_at=now)

    def delete_retention_policy(self, env: str, task_id: str | None) -> bool:
        with self._transaction() as tx:
            return tx.x("delete_retention_policy", env=env, task_id=task_id or "") > 0

    def count_prunable(self, rule: PruneRule) -> int:
        body, params = _candidates_sql(rule)
        with self._transaction() as tx:
            return int(self._raw(tx, f"SELECT COUNT(*) AS n {body}", params)[0]["n"])

    def prune_batch(self, rule: PruneRule, limit: int) -> list[str]:
        # SQLite has one writer and no row locks; on PostgreSQL concurrent pruners (every
        # scheduler prunes) take disjoint batches.
        lock = " FOR UPDATE OF r SKIP LOCKED" if self.dialect == "postgres" else ""
        with self._transaction() as tx:
            if self.dialect == "postgres":
                # The planner prices the per-row subqueries high enough to JIT-compile a
                # 10 ms batch for a second; this transaction only (pooler-safe).
                self._raw(tx, "SET LOCAL jit = off", {})
            rows: list[Row] = []
            # One final status at a time, in id order from the oldest, never a scan of
            # the table, so a batch costs the same with a million runs to go as with
            # ten: a range of runs_env_status_live (env, status, id) for a status other
            # than COMPLETED, runs_env_idp (env, substr(id, 5, 12)) for COMPLETED, which
            # nearly every old run is (both id order: _rows.ID_KEY).
            for status in _FINAL_LIST:
                if len(rows) >= limit:
                    break
                body, params = _candidates_sql(rule, status)
                params["limit"] = limit - len(rows)
                # Oldest first by the key alone: a batch need not be in exact id order,
                # and a key's ties cost no sort (nor a plan that prefers one).
                order = f"ORDER BY {ID_KEY}" if status == "COMPLETED" else "ORDER BY r.id"
                rows += self._raw(
                    tx, f"SELECT r.id, r.tags {body} {order} LIMIT :limit{lock}", params)
            if not rows:
                return []
            ids = [str(r["id"]) for r in rows]
            listed = self._list(ids)
            tx.x("prune_journal", ids=listed)
            tx.x("prune_run_events", ids=listed)
            tx.x("prune_run_cancel_keys", ids=listed)
            tx.x("prune_run_traces", ids=listed)
            tx.x("prune_run_error_occurrences", ids=listed)
            tx.x("prune_run_waits", ids=listed)
            tx.x("prune_waitpoints", ids=listed)
            tx.many("prune_run_tag", [
                {"env": rule.env, "tag": tag, "run_id": r["id"]}
                for r in rows for tag in json.loads(r["tags"] or "[]")
            ])
            tx.x("prune_runs", ids=listed)
        return ids

    def prune_bulk_actions(self, env: str, before: float) -> int:
        with self._transaction() as tx:
            return tx.x("prune_bulk_actions", env=env, before=before)
