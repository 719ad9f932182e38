"""The SQL store, shared by both backends: its parts put together, plus the schema,
triggering, cancelling, queues, task definitions and settings.

Backends supply a transaction (``_transaction``), how list parameters travel
(``_list``), wake-ups, and worker life locks; everything else is written once against the
named queries in ``sql/queries.sql``, in parts over one typed base (``_sql_core.py``):
claims, commits, waitpoints, reading, workers and the tick, stats, the API, schedules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

from .._errors import RunNotFound
from .._serde import dumps, loads
from ..runs import Run, RunStatus
from ._rows import (
    RATE_GUARD,
    SCHEMA_VERSION,  # noqa: F401 - imported from here by tests and tools
    Row,
    Tx,
    _error,
    _task_def,
    migrations,  # noqa: F401 - tests import the migration list from here
    run_from_row,
)
from ._sql_alerts import AlertsMixin
from ._sql_api import ApiMixin
from ._sql_bulk import BulkMixin
from ._sql_commit import CommitMixin
from ._sql_doctor import DoctorMixin
from ._sql_errors import ErrorsMixin
from ._sql_events import EventsMixin
from ._sql_group_trigger import GroupTriggerMixin
from ._sql_groups import GroupsMixin
from ._sql_observability import ObservabilityMixin
from ._sql_reading import ReadingMixin
from ._sql_retention import RetentionMixin
from ._sql_schedules import SchedulesMixin
from ._sql_schema import SchemaMixin
from ._sql_stats import StatsMixin
from ._sql_usage import UsageMixin
from ._sql_versions import VersionsMixin
from ._sql_waitpoints import WaitpointsMixin
from ._sql_webhooks import WebhooksMixin
from ._sql_workers import WorkersMixin
from .base import (
    NewRun,
    QueueListing,
    QueueRow,
    QueueSpec,
    QueueState,
    TaskDef,
    TriggerResult,
)


class SqlStore(
    CommitMixin, WaitpointsMixin, ReadingMixin, WorkersMixin, StatsMixin, ApiMixin, SchedulesMixin,
    AlertsMixin, ErrorsMixin,
    ObservabilityMixin,
    BulkMixin, EventsMixin, GroupsMixin, RetentionMixin,
    SchemaMixin, DoctorMixin,
    UsageMixin,
    VersionsMixin, WebhooksMixin, GroupTriggerMixin,
):
    """The SQL store: its parts put together; a backend supplies the hooks of ``SqlCore``."""

    # -- schema: migrate and check_schema are _sql_schema.SchemaMixin's ----------------
    @property
    def safe_url(self) -> str:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.url)

    # -- triggering -----------------------------------------------------------------------
    def trigger(self, runs: Sequence[NewRun]) -> list[TriggerResult]:
        now = self.now()
        if self._alone(runs) and (self._insert_alone(runs[0], now) if len(runs) == 1
                                  else self._insert_many_alone(runs, now)):
            results = [TriggerResult(r.id, False) for r in runs]
        else:
            with self._transaction() as tx:
                results = self._insert_runs(tx, runs, now)
        # Committed: their queue and slot rows exist, and rows of these are never deleted,
        # so later triggers in this process skip the upserts (two round trips each).
        self._ensured.update((r.env, r.queue, r.concurrency_key) for r in runs)
        if any(not r.delay for r in runs):
            self.wake_local()
        return results

    def _alone(self, runs: Sequence[NewRun]) -> bool:
        """Whether ``runs`` need nothing but their rows: no idempotency key, no trace row
        (it goes in the same transaction), no debounce (its group row is upserted in the
        same transaction), their queue and slot rows known to exist."""
        # Small groups only: a bulk trigger streams with COPY in a transaction, faster.
        return 0 < len(runs) <= 256 and all(
            r.idempotency_key is None and r.trace_context is None
            and not r.cancel_paths  # its cancel_on keys go in the same transaction
            and r.group is None  # a debounced run may join another (_sql_groups)
            and (r.env, r.queue, r.concurrency_key) in self._ensured for r in runs)

    # -- control --------------------------------------------------------------------------
    def cancel(self, env: str, run_id: str) -> tuple[Run, list[str]]:
        now = self.now()
        ended: list[str] = []
        with self._transaction() as tx:
            if not tx.q("get_run", env=env, id=run_id):
                raise RunNotFound(f"no run {run_id!r} in environment {env!r}", run_id=run_id)
            self._cancel_tree(tx, run_id, now, ended)
            run = run_from_row(tx.q("get_run", env=env, id=run_id)[0])
        return run, ended

    def _cancel_tree(self, tx: Tx, run_id: str, now: float, ended: list[str]) -> None:
        slot = tx.q("slot_of_run", run_id=run_id)[0]
        # Twice at most: a run a reaper requeued after the first look is idle at the next;
        # a final one matches neither time.
        for _ in range(2):
            if self._cancel_one(tx, run_id, slot, now, ended):
                break
        for child in tx.q("children_to_cancel", id=run_id):
            self._cancel_tree(tx, child["id"], now, ended)

    def _cancel_one(self, tx: Tx, run_id: str, slot: Row, now: float, ended: list[str]) -> bool:
        """Cancel the run itself; False if it changed status under the cancel (look again)."""
        if tx.q("cancel_idle", id=run_id, now=now):
            ended.append(run_id)
            tx.x("usage_outbox_add", ids=self._list([run_id]))
            tx.x("clear_run_waits", run_id=run_id)
            if slot["parent_waitpoint_id"]:
                self._child_done(tx, slot["parent_waitpoint_id"], now)
        elif tx.q("held_by_no_live_holder", id=run_id, now=now):
            # No live worker will hear this cancel (C10): it ends here, the slot its
            # holder took given back; the holder, should it come back, is fenced (C4).
            ended.append(run_id)
            self._lock_queues_for(tx, [run_id])
            error = _error("canceled", "the run was canceled")
            self._finish(tx, run_id, RunStatus.CANCELED, now, error=error, hooks_due=True)
        elif not tx.x("cancel_executing", id=run_id, now=now):
            return False  # final already, or requeued by a reaper since the first look
        return True

    # -- queues ---------------------------------------------------------------------------
    def declare_queues(self, env: str, specs: Sequence[QueueSpec]) -> None:
        now = self.now()
        with self._transaction() as tx:
            # By name: the order claims lock queue rows in, so a starting worker's upsert
            # cannot deadlock against a claim on PostgreSQL.
            for s in sorted(specs, key=lambda s: s.name):
                tx.x(
                    "declare_queue",
                    env=env,
                    name=s.name,
                    concurrency_limit=s.concurrency_limit,
                    global_limit=s.global_limit,
                    rate_limit_count=s.rate_limit[0] if s.rate_limit else None,
                    rate_limit_period=s.rate_limit[1] if s.rate_limit else None,
                    now=now,
                )
                tx.x("ensure_slot", env=env, queue=s.name, ckey="")

    def update_queue(
        self,
        env: str,
        name: str,
        *,
        paused: bool | None = None,
        concurrency_limit: int | bool | None = False,
    ) -> QueueRow:
        now = self.now()
        sets = ["updated_at = :now"]
        params: dict[str, Any] = {"env": env, "name": name, "now": now}
        if paused is not None:
            sets.append("paused = :paused")
            params["paused"] = 1 if paused else 0
        if concurrency_limit is not False:
            sets.append("concurrency_limit = :limit, limit_overridden = 1")
            params["limit"] = concurrency_limit
        with self._transaction() as tx:
            tx.x("ensure_queue", env=env, queue=name, now=now)
            self._raw(
                tx, f"UPDATE queues SET {', '.join(sets)} WHERE env = :env AND name = :name", params
            )
            row = tx.q("get_queue", env=env, name=name)[0]
            if paused is False:
                self._notify(tx, env)
        self.wake_local()
        return cast(QueueRow, dict(row))

    def list_queues(self, env: str) -> list[QueueListing]:
        with self._transaction() as tx:
            rows = [cast(QueueListing, dict(r)) for r in tx.q("list_queues", env=env)]
            for r in rows:
                r["keys"] = {
                    k["ckey"]: int(k["executing"])
                    for k in tx.q("queue_keys", env=env, queue=r["name"])
                }
        return rows

    def queue_state(self, env: str, queue: str, ckey: str) -> QueueState | None:
        with self._transaction() as tx:
            rows = tx.q("queue_state", env=env, queue=queue, ckey=ckey)
        if not rows:
            return None
        state = dict(rows[0])
        state["rate_window"] = loads(state["rate_window"]) or []
        # When the rate limit next lets a run start (None while it does now).
        state["rate_free_at"] = None
        count = state["rate_limit_count"]
        if count:
            span = state["rate_limit_period"] * (1 + RATE_GUARD)
            live = sorted(t for t in state["rate_window"] if t > self.now() - span)
            if len(live) >= count:
                state["rate_free_at"] = live[len(live) - count] + span
        return cast(QueueState, state)

    # -- task definitions -----------------------------------------------------------------
    def publish_tasks(self, env: str, tasks: Sequence[TaskDef]) -> None:
        now = self.now()
        with self._transaction() as tx:
            tx.many(
                "upsert_task",
                [
                    {
                        "env": env,
                        "id": t.id,
                        "queue": t.queue,
                        "payload_schema": dumps(t.payload_schema),
                        "spec": dumps(t.spec),
                        "now": now,
                    }
                    for t in tasks
                ],
            )

    def get_task(self, env: str, task_id: str) -> TaskDef | None:
        with self._transaction() as tx:
            rows = tx.q("get_task", env=env, id=task_id)
        return _task_def(rows[0]) if rows else None

    def list_tasks(self, env: str) -> list[TaskDef]:
        with self._transaction() as tx:
            return [_task_def(r) for r in tx.q("list_tasks", env=env)]

    # -- settings -------------------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        with self._transaction() as tx:
            rows = tx.q("get_setting", key=key)
        return str(rows[0]["value"]) if rows else None

    def set_setting_if_absent(self, key: str, value: str) -> str:
        with self._transaction() as tx:
            tx.x("insert_setting", key=key, value=value)
            return str(tx.q("get_setting", key=key)[0]["value"])

    # -- dashboard sessions ---------------------------------------------------------------
    def create_dashboard_session(self, id_hash: str, expires_at: float) -> None:
        now = self.now()
        with self._transaction() as tx:
            tx.x("delete_expired_dashboard_sessions", now=now)
            tx.x("insert_dashboard_session", id_hash=id_hash, now=now, expires_at=expires_at)

    def dashboard_session_alive(self, id_hash: str) -> bool:
        with self._transaction() as tx:
            return bool(tx.q("find_dashboard_session", id_hash=id_hash, now=self.now()))

    def end_dashboard_session(self, id_hash: str) -> None:
        with self._transaction() as tx:
            tx.x("delete_dashboard_session", id_hash=id_hash)

