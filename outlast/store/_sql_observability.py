"""Store reads for metrics and tracing (``ObservabilityStore``): small, off the hot path,
run at scrape time or once per traced attempt."""

from __future__ import annotations

from collections.abc import Sequence

from ._observability_base import QueueGauge
from ._sql_core import SqlCore


class ObservabilityMixin(SqlCore):
    def queue_gauges(self) -> list[QueueGauge]:
        with self._transaction() as tx:
            rows = tx.q("queue_gauges")
        return [
            QueueGauge(
                env=r["env"],
                queue=r["name"],
                depth=int(r["depth"]),
                oldest_ready_at=(
                    float(r["oldest_ready_at"]) if r["oldest_ready_at"] is not None else None
                ),
                executing=int(r["executing"]),
                limit=r["global_limit"] if r["global_limit"] is not None
                else r["concurrency_limit"],
            )
            for r in rows
        ]

    def live_workers(self) -> dict[tuple[str, str], int]:
        with self._transaction() as tx:
            rows = tx.q("live_worker_counts", now=self.now())
        return {(r["env"], ""): int(r["n"]) for r in rows}

    def trace_contexts(self, env: str, run_ids: Sequence[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        with self._transaction() as tx:
            rows = tx.q("run_traces", env=env, ids=self._list(list(run_ids)))
        return {r["run_id"]: r["traceparent"] for r in rows}
