"""Workers and the scheduler's tick: registration, heartbeats, timers, reaping dead
workers and orphaned runs, and hooks owed by runs that ended outside their worker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

from .._serde import dumps, loads
from ..runs import Run
from ._rows import (
    Tx,
    run_from_row,
)
from ._sql_core import SqlCore
from .base import (
    Heartbeat,
    TickReport,
    WorkerInfo,
    WorkerRow,
)

log = logging.getLogger("outlast.store._sql")


class WorkersMixin(SqlCore):
    # -- workers --------------------------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        now = self.now()
        with self._transaction() as tx:
            tx.x(
                "register_worker",
                id=info.id,
                env=info.env,
                host=info.host,
                pid=info.pid,
                concurrency=info.concurrency,
                tasks=dumps(info.tasks),
                lock_key=info.lock_key,
                lock_path=info.lock_path,
                now=now,
                lease_expires_at=now + info.lease_seconds,
                version=info.version,
                draining=1 if info.draining else 0,
            )
            # A draining worker never makes its version newer (C11: it takes no new run).
            # A version deployed for the first time is current, as a deploy after a
            # rollback (promote) expects: the pin gives way to it.
            serving = info.version and not info.draining
            if serving and tx.q("register_version", env=info.env, version=info.version, now=now):
                tx.x("unpin_version", env=info.env)
            # Its release, for `outlast migrate --check` and contract steps.
            self._insert_process(tx, info.id, "worker", info.env)

    def heartbeat(self, worker_id: str, lease_seconds: float) -> Heartbeat:
        now = self.now()
        with self._transaction() as tx:
            alive = bool(
                tx.q("heartbeat", id=worker_id, now=now, lease_expires_at=now + lease_seconds)
            )
            if not alive:
                return Heartbeat(alive=False, cancel_requested=[])
            cancels = [r["id"] for r in tx.q("cancel_requested", id=worker_id)]
            paused = [r["name"] for r in tx.q("paused_holding", id=worker_id)]
        return Heartbeat(alive=True, cancel_requested=cancels, paused_holding=paused)

    def stop_worker(self, worker_id: str) -> None:
        with self._transaction() as tx:
            tx.x("stop_worker", id=worker_id, now=self.now())
            tx.x("withdraw_offer", worker_id=worker_id)

    def list_workers(self, env: str | None = None) -> list[WorkerRow]:
        with self._transaction() as tx:
            rows = [dict(r) for r in tx.q("list_workers", env=env)]
        for r in rows:
            r["tasks"] = loads(r["tasks"])
        return cast(list[WorkerRow], rows)

    def live_task_ids(self, env: str) -> set[str]:
        """Task ids served by at least one live worker."""
        with self._transaction() as tx:
            rows = tx.q("live_task_workers", env=env, now=self.now())
        return {t for r in rows for t in loads(r["tasks"])}


    # -- scheduling -----------------------------------------------------------------------
    def tick(self) -> TickReport:
        now = self.now()
        ended: list[str] = []
        with self._transaction() as tx:
            promoted = tx.q("promote_delayed", now=now)
            for env in {r["env"] for r in promoted}:
                self._notify(tx, env)
            expired = tx.q("expire_runs", now=now)
            if expired:
                tx.x("usage_outbox_add", ids=self._list([r["id"] for r in expired]))
            for r in expired:
                ended.append(r["id"])
                if r["parent_waitpoint_id"]:
                    self._child_done(tx, r["parent_waitpoint_id"], now)
            fired = self._fire_timers(tx, now)
            lapsed = [r["id"] for r in tx.q("lapsed_workers", now=now)]
            requeued = 0
            for worker_id in lapsed:
                requeued += self._reap_worker(tx, worker_id, now, ended)
        requeued += self.reap_orphaned_runs(now, ended)
        if promoted or fired or requeued:
            self.wake_local()
        return TickReport(
            promoted=len(promoted),
            expired=len(expired),
            reaped_workers=len(lapsed),
            requeued_runs=requeued,
            fired_timers=fired,
            ended=ended,
        )

    def _fire_timers(self, tx: Tx, now: float) -> int:
        """Complete due sleeps and time out due tokens (up to 5000 per tick), resuming
        their runs; how many fired. A backend hook: PostgreSQL does it in one statement
        instead of six round trips per waitpoint, which held 10,000 due timers' runs
        back for most of a minute."""
        fired = 0
        for t in tx.q("due_timers", now=now):
            status = "completed" if t["kind"] == "sleep" else "timed_out"
            fired += self._complete(tx, t["id"], status, None, status != "completed", now)
        return fired

    def _reap_worker(self, tx: Tx, worker_id: str, now: float, ended: list[str]) -> int:
        if not tx.x("mark_worker_dead", id=worker_id, now=now):
            return 0
        tx.x("withdraw_offer", worker_id=worker_id)
        rows = tx.q("runs_of_worker", id=worker_id)
        runs = [r["id"] for r in rows]
        if runs:
            self._lock_queues_for(tx, runs)
        for r in rows:
            if r["status"] == "DEQUEUED":
                self._dequeued_lost(tx, r["id"], now)
            elif self._worker_lost(tx, r["id"], now):
                ended.append(r["id"])
        if runs:
            env = tx.q("slot_of_run", run_id=runs[0])[0]["env"]
            self._notify(tx, env)
        return len(runs)

    def reap_orphaned_runs(self, now: float | None = None, ended: list[str] | None = None) -> int:
        """Requeue runs EXECUTING or DEQUEUED whose holder is gone, not alive, or past its
        lease, whatever its row says (C10): a worker marked dead or stopped while it still
        held runs, or one that claimed after it was reaped. They go the way a reaped
        worker's runs go (an attempt lost, the slot given back). How many."""
        now = self.now() if now is None else now
        ended = [] if ended is None else ended
        with self._transaction() as tx:
            rows = tx.q("orphaned_runs", now=now)
            if not rows:
                return 0
            self._lock_queues_for(tx, [r["id"] for r in rows])
            for r in rows:
                if r["status"] == "DEQUEUED":
                    self._dequeued_lost(tx, r["id"], now)
                elif self._worker_lost(tx, r["id"], now):
                    ended.append(r["id"])
            for env in {r["env"] for r in rows}:
                self._notify(tx, env)
        log.warning("requeued %d runs held by no live worker", len(rows))
        return len(rows)

    def reap_worker(self, worker_id: str) -> int:
        """Declare a worker dead and requeue its runs now (a worker that finds its own life
        lock gone while its row still says alive does this to itself); how many runs."""
        with self._transaction() as tx:
            return self._reap_worker(tx, worker_id, self.now(), [])

    def reap_dead_workers(self) -> TickReport:
        with self._transaction() as tx:
            alive = tx.q("alive_workers")
        dead = self.dead_workers(alive)
        if not dead:
            return TickReport()
        now = self.now()
        ended: list[str] = []
        requeued = 0
        with self._transaction() as tx:
            for worker_id in dead:
                requeued += self._reap_worker(tx, worker_id, now, ended)
        self.wake_local()
        return TickReport(reaped_workers=len(dead), requeued_runs=requeued, ended=ended)

    def take_hooks_due(self, env: str, task_ids: Sequence[str]) -> list[Run]:
        """Runs that ended outside a worker and whose end hooks have not run yet."""
        if not task_ids:
            return []
        with self._transaction() as tx:
            rows = tx.q("take_hooks_due", env=env, task_ids=self._list(list(task_ids)))
        return [run_from_row(r) for r in rows]

    def take_ended_elsewhere(
        self, env: str, task_ids: Sequence[str], version: str | None
    ) -> list[Run]:
        """Runs of tasks without end hooks that ended outside a worker, once each."""
        if not task_ids:
            return []
        with self._transaction() as tx:
            rows = tx.q(
                "take_ended_elsewhere",
                env=env,
                task_ids=self._list(list(task_ids)),
                version=version,
            )
        return [run_from_row(r) for r in rows]

