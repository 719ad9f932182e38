"""Store reads for the dashboard: environments, duration percentiles, per-key queue depth.

Read-only and off the hot path. Kept apart from the runtime's parts; the
queries are plain SQL that both dialects accept, bound through the backend's ``_raw``.
"""

from __future__ import annotations

from ..runs import Run
from ._rows import run_from_row
from ._sql_core import SqlCore
from ._types import TaskDurations

# Every environment the database has seen. Queues are ensured on every trigger and
# tasks, workers and keys carry their env, so these small tables cover every env that
# has runs without a scan of ``runs``.
KNOWN_ENVS = """
SELECT env FROM queues
UNION SELECT env FROM tasks
UNION SELECT env FROM workers
UNION SELECT env FROM api_keys
"""

# Nearest-rank percentiles (the lower one) of started_at -> finished_at per task, over
# runs created since :since. By created_at, not by the time in run ids: ids carry the
# host's clock, timestamps the store's. Integer division picks the rank identically on
# SQLite and PostgreSQL (CAST rounds on one and truncates on the other).
DURATION_PERCENTILES = """
WITH d AS (
    SELECT task_id, finished_at - started_at AS dur
    FROM runs
    WHERE env = :env AND created_at >= :since
      AND finished_at IS NOT NULL AND started_at IS NOT NULL
), ranked AS (
    SELECT task_id, dur,
           ROW_NUMBER() OVER (PARTITION BY task_id ORDER BY dur) AS rn,
           COUNT(*) OVER (PARTITION BY task_id) AS n
    FROM d
)
SELECT task_id, n,
       MAX(CASE WHEN rn = ((n - 1) * 50) / 100 + 1 THEN dur END) AS p50,
       MAX(CASE WHEN rn = ((n - 1) * 95) / 100 + 1 THEN dur END) AS p95
FROM ranked
GROUP BY task_id, n
"""

# Queued runs per concurrency key of one queue: served by the partial index on QUEUED
# runs (env, queue, concurrency_key, ready_at).
QUEUED_BY_KEY = """
SELECT concurrency_key AS ckey, COUNT(*) AS n
FROM runs
WHERE env = :env AND queue = :queue AND status = 'QUEUED'
GROUP BY concurrency_key
ORDER BY n DESC
LIMIT :limit
"""


QUEUE_NAMES = "SELECT name FROM queues WHERE env = :env ORDER BY name"

# A run's children. The IN form steers SQLite to the parent_id index; the plain
# "env = :env AND parent_id = :parent" walks the (env, id) index for its ORDER BY and
# reads the whole environment (about 90 ms at 100,000 runs, on every poll of a run page).
CHILD_RUNS = """
SELECT r.* FROM runs r
WHERE r.env = :env AND r.id IN (SELECT c.id FROM runs c WHERE c.parent_id = :parent_id)
ORDER BY r.id
LIMIT :limit
"""


class StatsMixin(SqlCore):
    """Mixed into SqlStore; relies on its ``_transaction`` and ``_raw``."""

    def known_envs(self) -> list[str]:
        """Environment names seen in queues, tasks, workers and secret keys."""
        with self._transaction() as tx:
            rows = self._raw(tx, KNOWN_ENVS, {})
        return sorted({str(r["env"]) for r in rows})

    def duration_percentiles(self, env: str, since: float) -> dict[str, TaskDurations]:
        """Per task: ``count``, ``p50`` and ``p95`` seconds of runs created since
        ``since`` that started and finished."""
        with self._transaction() as tx:
            rows = self._raw(tx, DURATION_PERCENTILES, {"env": env, "since": since})
        return {
            str(r["task_id"]): TaskDurations(
                count=float(r["n"]), p50=float(r["p50"] or 0.0), p95=float(r["p95"] or 0.0)
            )
            for r in rows
        }

    def queue_names(self, env: str) -> list[str]:
        """The environment's queue names (without the per-queue counts of list_queues)."""
        with self._transaction() as tx:
            return [str(r["name"]) for r in self._raw(tx, QUEUE_NAMES, {"env": env})]

    def child_runs(self, env: str, run_id: str, limit: int = 100) -> list[Run]:
        """The runs ``run_id`` triggered, oldest first."""
        with self._transaction() as tx:
            rows = self._raw(tx, CHILD_RUNS, {"env": env, "parent_id": run_id, "limit": limit})
        return [run_from_row(r) for r in rows]

    def queued_by_key(self, env: str, queue: str, limit: int = 50) -> dict[str, int]:
        """Queued runs per concurrency key ('' for runs without one), largest first."""
        with self._transaction() as tx:
            rows = self._raw(tx, QUEUED_BY_KEY, {"env": env, "queue": queue, "limit": limit})
        return {str(r["ckey"]): int(r["n"]) for r in rows}
