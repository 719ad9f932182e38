"""The errors page in the SQL store (``ErrorStore``): failures grouped by fingerprint, as
the failure scan (``_sql_alerts.py``) keeps them."""

from __future__ import annotations

from ._alerts_base import ErrorGroup
from ._rows import Row
from ._sql_core import SqlCore

GROUP_STATUSES = ("open", "resolved", "ignored")


def _group(row: Row) -> ErrorGroup:
    return ErrorGroup(
        env=row["env"],
        fingerprint=row["fingerprint"],
        exc_type=row["exc_type"],
        message=row["message"],
        frame=row["frame"],
        status=row["status"],
        count=int(row["count"]),
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        sample_run_id=row["sample_run_id"],
        resolved_at=row["resolved_at"],
        reopened=int(row["reopened"]),
    )


class ErrorsMixin(SqlCore):
    def list_error_groups(
        self, env: str, status: str | None = None, limit: int = 100
    ) -> list[ErrorGroup]:
        with self._transaction() as tx:
            rows = tx.q("list_error_groups", env=env, status=status, limit=limit)
        return [_group(r) for r in rows]

    def error_group(
        self, env: str, fingerprint: str, bucket: float = 3600.0
    ) -> ErrorGroup | None:
        key = {"env": env, "fingerprint": fingerprint}
        with self._transaction() as tx:
            rows = tx.q("get_error_group", **key)
            if not rows:
                return None
            tasks = {r["task_id"]: int(r["n"]) for r in tx.q("error_group_tasks", **key)}
            versions = {
                r["version"]: int(r["n"]) for r in tx.q("error_group_versions", **key)
            }
            hist = [
                (int(r["k"]) * bucket, int(r["n"]))
                for r in tx.q("error_group_histogram", bucket=bucket, **key)
            ]
        group = _group(rows[0])
        group.tasks.update(tasks)
        group.versions.update(versions)
        group.histogram.extend(hist)
        return group

    def set_error_group_status(self, env: str, fingerprint: str, status: str) -> bool:
        if status not in GROUP_STATUSES:
            raise ValueError(f"status must be one of {', '.join(GROUP_STATUSES)}")
        with self._transaction() as tx:
            return bool(
                tx.x(
                    "set_error_group_status",
                    env=env,
                    fingerprint=fingerprint,
                    status=status,
                    now=self.now(),
                )
            )
