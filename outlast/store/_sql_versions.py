"""Task code versions in the SQL store (C11): which versions are registered and live,
the pinned one, the runs locked to each, and re-locking them (``runs migrate``)."""

from __future__ import annotations

from .._serde import loads
from ._sql_core import SqlCore
from ._versions_base import LiveWorker


class VersionsMixin(SqlCore):
    def version_workers(self, env: str) -> list[LiveWorker]:
        with self._transaction() as tx:
            rows = tx.q("version_live_workers", env=env, now=self.now())
        return [
            LiveWorker(
                id=r["id"],
                version=r["version"],
                tasks=loads(r["tasks"]) or [],
                draining=bool(r["draining"]),
                started_at=r["started_at"],
            )
            for r in rows
        ]

    def registered_versions(self, env: str) -> dict[str, float]:
        with self._transaction() as tx:
            rows = tx.q("registered_versions", env=env)
        return {r["version"]: r["registered_at"] for r in rows}

    def pinned_version(self, env: str) -> str | None:
        with self._transaction() as tx:
            rows = tx.q("pinned_version", env=env)
        return rows[0]["version"] if rows else None

    def pin_version(self, env: str, version: str | None) -> None:
        with self._transaction() as tx:
            if version is None:
                tx.x("unpin_version", env=env)
            else:
                tx.x("pin_version", env=env, version=version, now=self.now())
                self._notify(tx, env)  # workers of it may have new runs to take

    def locked_runs(self, env: str, version: str | None = None) -> dict[str, dict[str, int]]:
        with self._transaction() as tx:
            rows = tx.q("locked_runs", env=env, version=version)
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["version"], {})[r["status"]] = int(r["n"])
        return out

    def migrate_runs(
        self, env: str, from_version: str, to_version: str, task_id: str | None = None
    ) -> int:
        with self._transaction() as tx:
            rows = tx.q(
                "migrate_runs",
                env=env,
                from_version=from_version,
                to_version=to_version,
                task_id=task_id,
                now=self.now(),
            )
            if rows:
                self._notify(tx, env)
        return len(rows)
