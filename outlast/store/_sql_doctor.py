"""The SQL store's part for `outlast doctor`: read-only queries about its health."""

from __future__ import annotations

from typing import Any

from ._doctor_base import DoctorOps
from ._sql_core import SqlCore


class DoctorMixin(SqlCore, DoctorOps):
    def _rows(self, name: str, **params: Any) -> list[dict[str, Any]]:
        with self._transaction() as tx:
            return [dict(r) for r in tx.q(name, **params)]

    def doctor_database(self) -> dict[str, Any]:
        return self._rows("doctor_database")[0]

    def doctor_stale_workers(self, env: str, before: float) -> list[dict[str, Any]]:
        return self._rows("doctor_stale_workers", env=env, before=before)

    def doctor_stuck_runs(self, env: str, before: float) -> list[dict[str, Any]]:
        return self._rows("doctor_stuck_runs", env=env, before=before)

    def doctor_paused_backlog(self, env: str) -> list[dict[str, Any]]:
        return self._rows("doctor_paused_backlog", env=env)

    def doctor_queued_tasks(self, env: str) -> list[dict[str, Any]]:
        return self._rows("doctor_queued_tasks", env=env)
