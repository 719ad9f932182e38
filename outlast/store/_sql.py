"""The store's logic, shared by both backends.

Backends supply a transaction (``_transaction``), how list parameters travel
(``_list``), wake-ups, and worker life locks; everything else — triggering, claiming
under queue limits, fenced commits, waitpoints, reaping — is written once here against
the named queries in ``sql/queries.sql``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import RunNotFound
from .._serde import dumps, loads, plain_text
from ..runs import JournalEntry, Run, RunEvent, RunStatus
from ._rows import (
    RATE_GUARD,
    Row,
    Tx,
    _error,
    _journal_entry,
    _task_def,
    load_queries,
    migrations,  # noqa: F401 - tests import the migration list from here
    run_from_row,
)
from ._sql_api import ApiMixin
from ._sql_claims import ClaimsMixin
from ._sql_schedules import SchedulesMixin
from ._sql_schema import SchemaMixin
from ._sql_stats import StatsMixin
from ._sql_waitpoints import WaitpointsMixin
from .base import (
    Claim,
    EndSegment,
    Heartbeat,
    LogLine,
    NewRun,
    Op,
    QueueSpec,
    SetMetadata,
    StartDequeued,
    StartWait,
    StepDone,
    Store,
    TaskDef,
    TickReport,
    TriggerResult,
    WorkerInfo,
)

SCHEMA_VERSION = 4

log = logging.getLogger(__name__)


class SqlStore(ClaimsMixin, WaitpointsMixin, StatsMixin, ApiMixin, SchedulesMixin, SchemaMixin,
               Store):
    dialect: str

    def __init__(self) -> None:
        self.q = load_queries(self.dialect)
        self._ensured: set[tuple[str, str, str]] = set()  # (env, queue, key) rows known to exist

    # -- backend hooks --------------------------------------------------------------------
    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A read-write transaction; commits on success, rolls back on error."""

    @abc.abstractmethod
    def _list(self, values: Sequence[Any]) -> Any:
        """A list parameter in this backend's form."""

    def _notify(self, tx: Tx, env: str) -> None:
        """Announce ready work to other processes (inside the transaction)."""

    # -- schema (migrate, check_schema: _sql_schema.SchemaMixin) ---------------------------
    @abc.abstractmethod
    def _schema_exists(self) -> bool: ...

    def _lock_for_migration(self, tx: Tx) -> None:
        """Serialize concurrent migrations (PostgreSQL takes an advisory lock)."""

    @property
    def safe_url(self) -> str:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.url)

    # -- triggering -----------------------------------------------------------------------
    def trigger(self, runs: Sequence[NewRun]) -> list[TriggerResult]:
        now = self.now()
        one = runs[0] if len(runs) == 1 else None
        if (
            one is not None
            and one.idempotency_key is None
            and (one.env, one.queue, one.concurrency_key) in self._ensured
            and self._insert_alone(one, now)
        ):
            results = [TriggerResult(one.id, False)]
        else:
            with self._transaction() as tx:
                results = self._insert_runs(tx, runs, now)
        # Committed: their queue and slot rows exist, and rows of these are never deleted,
        # so later triggers in this process skip the upserts (two round trips each).
        self._ensured.update((r.env, r.queue, r.concurrency_key) for r in runs)
        if any(not r.delay for r in runs):
            self.wake_local()
        return results

    def _run_row(self, r: NewRun, now: float) -> Row:
        available = now + (r.delay or 0.0)
        return {
            "id": r.id,
            "env": r.env,
            "task_id": r.task_id,
            "queue": r.queue,
            "status": "DELAYED" if r.delay else "QUEUED",
            "payload": r.payload,
            "metadata": r.metadata,
            "tags": dumps(r.tags),
            "max_attempts": r.max_attempts,
            "priority": r.priority,
            "concurrency_key": r.concurrency_key,
            "idempotency_key": r.idempotency_key,
            "idempotency_expires_at": (
                now + r.idempotency_ttl if r.idempotency_key and r.idempotency_ttl else None
            ),
            "idempotency_active": 1 if r.idempotency_key else 0,
            "now": now,
            "available_at": available,
            "ready_at": available - r.priority,
            "delay_until": available if r.delay else None,
            "ttl_expires_at": available + r.ttl if r.ttl else None,
            "max_duration": r.max_duration,
            "parent_id": r.parent_id,
            "root_id": r.root_id,
            "depth": r.depth,
            "replayed_from": r.replayed_from,
            "parent_waitpoint_id": r.parent_waitpoint_id,
        }

    def _insert_plain(self, tx: Tx, runs: Sequence[NewRun], now: float) -> None:
        """Insert runs without an idempotency key, which conflict with nothing. A backend
        hook: PostgreSQL streams many with COPY."""
        tx.many("insert_run", [self._run_row(r, now) for r in runs])

    def _insert_tags(self, tx: Tx, tags: list[Row]) -> None:
        """Insert run_tags rows; a backend hook (PostgreSQL sends a batch's in one
        statement rather than one per tag)."""
        tx.many("insert_tag", tags)

    def _insert_alone(self, run: NewRun, now: float) -> bool:
        """Write a run that needs nothing else (no idempotency key, its queue and slot rows
        known to exist) in one statement committed on its own, and announce it; False if
        the backend has no such shortcut and the caller must take a transaction. A backend
        hook: PostgreSQL saves the round trips of BEGIN, NOTIFY and COMMIT."""
        return False

    def _insert_runs(self, tx: Tx, runs: Sequence[NewRun], now: float) -> list[TriggerResult]:
        results: list[TriggerResult] = []
        plain: list[NewRun] = []
        inserted: list[NewRun] = []
        for r in runs:
            if r.idempotency_key is None:
                plain.append(r)
                inserted.append(r)
                results.append(TriggerResult(r.id, False))
                continue
            key = {"env": r.env, "task_id": r.task_id, "idempotency_key": r.idempotency_key}
            tx.x("release_idempotency_key", now=now, **key)
            if tx.q("insert_run_idempotent", **self._run_row(r, now)):
                inserted.append(r)
                results.append(TriggerResult(r.id, False))
            else:
                existing = tx.q("find_idempotent_run", **key)
                results.append(TriggerResult(existing[0]["id"], True))
        if plain:
            self._insert_plain(tx, plain, now)
        tags = [{"env": r.env, "tag": t, "run_id": r.id} for r in inserted for t in r.tags]
        if tags:
            self._insert_tags(tx, tags)
        slots = {(r.env, r.queue, r.concurrency_key) for r in inserted} - self._ensured
        queues = {(e, q) for e, q, _ in slots}
        tx.many("ensure_queue", [{"env": e, "queue": q, "now": now} for e, q in queues])
        tx.many("ensure_slot", [{"env": e, "queue": q, "ckey": k} for e, q, k in slots])
        for env in {r.env for r in inserted if not r.delay}:
            self._notify(tx, env)
        return results

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
            names = []
            for i, s in enumerate(status):
                params[f"status{i}"] = str(s)
                names.append(f":status{i}")
            where.append(f"r.status IN ({', '.join(names)})")
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
        if before:
            where.append("r.id < :before")
            params["before"] = before
        sql = f"SELECT r.* FROM runs r WHERE {' AND '.join(where)} ORDER BY r.id DESC LIMIT :limit"
        with self._transaction() as tx:
            rows = self._raw(tx, sql, params)
        return [run_from_row(r) for r in rows]

    @abc.abstractmethod
    def _raw(self, tx: Tx, sql: str, params: Mapping[str, Any]) -> list[Row]: ...

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

    # -- ending runs (shared by commits, cancels, expiry and reaping) ----------------------
    def _release_slot(self, tx: Tx, slot: Row) -> None:
        if slot["holds_slot"]:
            # Queue row before slot row: the order a claim locks them in. The reverse
            # order deadlocks a completion against a concurrent claim on PostgreSQL.
            tx.x("give_queue", env=slot["env"], queue=slot["queue"])
            tx.x("give_slot", env=slot["env"], queue=slot["queue"], ckey=slot["concurrency_key"])

    def _lock_queues_for(
        self, tx: Tx, run_ids: Sequence[str], env: str = "", names: Sequence[str] = ()
    ) -> list[Row] | None:
        """Lock the queue rows of runs about to give back slots, and the queues ``names``
        of ``env`` a claim in the same transaction takes from, all at once and in name
        order (as a claim does), before any is updated: a batch releasing slots of two
        queues must not lock them in the opposite order of a concurrent claim. Returns
        the rows of ``names`` as ``queues_for_claim`` reads them, as they were before this
        transaction released anything, or None. A backend hook: SQLite needs nothing,
        its writers are serialized by the file lock."""
        return None

    def _finish(
        self,
        tx: Tx,
        run_id: str,
        status: RunStatus,
        now: float,
        *,
        output: str | None = None,
        error: str | None = None,
        hooks_due: bool = False,
    ) -> None:
        """Move a run to a final status and let its parent's waitpoint know.

        ``hooks_due`` marks a run that ended outside its worker, whose end hooks a
        worker serving the task still has to run."""
        slot = tx.q("slot_of_run", run_id=run_id)[0]
        self._release_slot(tx, slot)
        tx.x(
            "end_run",
            run_id=run_id,
            status=str(status),
            output=output,
            error=error,
            now=now,
            hooks_due=1 if hooks_due else 0,
        )
        tx.x("clear_run_waits", run_id=run_id)
        if slot["parent_waitpoint_id"]:
            self._child_done(tx, slot["parent_waitpoint_id"], now)

    def _child_done(self, tx: Tx, waitpoint_id: str, now: float) -> None:
        rows = tx.q("child_done", id=waitpoint_id)
        if rows and int(rows[0]["pending_children"]) <= 0:
            self._complete(tx, waitpoint_id, "completed", None, False, now)

    def _complete(
        self, tx: Tx, waitpoint_id: str, status: str, output: str | None, is_error: bool, now: float
    ) -> bool:
        done = tx.q(
            "complete_waitpoint",
            id=waitpoint_id,
            status=status,
            output=output,
            is_error=1 if is_error else 0,
            now=now,
        )
        if not done:
            return False
        tx.x("finish_wait_entries", id=waitpoint_id, now=now)
        resumed = tx.q("resume_runs", id=waitpoint_id, now=now)
        for r in resumed:
            tx.x("clear_run_waits", run_id=r["id"])
        if resumed:
            envs = tx.q("get_waitpoint_env", id=waitpoint_id)
            for e in envs:
                self._notify(tx, e["env"])
        return True

    def _worker_lost(self, tx: Tx, run_id: str, now: float) -> str | None:
        """A run whose worker died: the attempt counts as failed. Returns it if it ended."""
        slot = tx.q("slot_of_run", run_id=run_id)[0]
        message = "the worker running this attempt was lost (crash, kill or lost lease)"
        error = _error("worker_lost", message)
        tx.x(
            "insert_event",
            run_id=run_id,
            ts=now,
            kind="attempt_failed",
            attempt=slot["attempt"],
            level="error",
            message=message,
            data=error,
        )
        if slot["attempt"] >= slot["max_attempts"]:
            self._finish(tx, run_id, RunStatus.FAILED, now, error=error, hooks_due=True)
            return run_id
        self._release_slot(tx, slot)
        tx.x("retry_run", run_id=run_id, error=error, retry_at=now, now=now)
        return None

    def _dequeued_lost(self, tx: Tx, run_id: str, now: float) -> None:
        """A run its dead worker held DEQUEUED: back to the queue, attempt unspent, noted."""
        tx.x("requeue_lost_dequeued", run_id=run_id, now=now)
        attempt = tx.q("slot_of_run", run_id=run_id)[0]["attempt"]
        tx.x(
            "insert_event",
            run_id=run_id,
            ts=now,
            kind="dequeued_lost",
            attempt=attempt,
            level="warning",
            message="the worker holding this run DEQUEUED was lost; it is queued again",
            data=None,
        )

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
    ) -> dict[str, Any]:
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
        return dict(row)

    def list_queues(self, env: str) -> list[dict[str, Any]]:
        with self._transaction() as tx:
            rows = [dict(r) for r in tx.q("list_queues", env=env)]
            for r in rows:
                r["keys"] = {
                    k["ckey"]: int(k["executing"])
                    for k in tx.q("queue_keys", env=env, queue=r["name"])
                }
        return rows

    def queue_state(self, env: str, queue: str, ckey: str) -> dict[str, Any] | None:
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
        return state

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
            )
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

    def list_workers(self, env: str | None = None) -> list[dict[str, Any]]:
        with self._transaction() as tx:
            rows = [dict(r) for r in tx.q("list_workers", env=env)]
        for r in rows:
            r["tasks"] = loads(r["tasks"])
        return rows

    def live_task_ids(self, env: str) -> set[str]:
        """Task ids served by at least one live worker."""
        with self._transaction() as tx:
            rows = tx.q("live_task_workers", env=env, now=self.now())
        return {t for r in rows for t in loads(r["tasks"])}


    # -- committing a worker's batch ------------------------------------------------------
    def apply(self, worker_id: str, ops: Sequence[Op]) -> list[bool]:
        if not ops:
            return []
        ok, _ = self.apply_and_claim(worker_id, ops, "", {}, 0)
        return ok

    def apply_and_claim(
        self,
        worker_id: str,
        ops: Sequence[Op],
        env: str,
        serves: Mapping[str, Sequence[str]],
        limit: int,
        reserve: Mapping[tuple[str, str], int] | None = None,
    ) -> tuple[list[bool], list[Claim]]:
        now = self.now()
        ids = sorted({op.run_id for op in ops})
        claiming = (limit > 0 or bool(reserve)) and bool(serves)
        with self._transaction() as tx:
            fenced = tx.q("fence", ids=self._list(ids), worker_id=worker_id, now=now) if ids else []
            # A fence that found a run has already read the worker alive with its lease
            # current, in this transaction, so only a batch that fenced nothing pays for the
            # check (a round trip on the hot path). Should a reaper mark the worker dead
            # while this claim commits, the runs it took are requeued by the orphan scan.
            claiming = claiming and (bool(fenced) or self._may_claim(tx, worker_id, now))
            held = {r["id"]: r for r in fenced}
            ok = [
                op.run_id in held and held[op.run_id]["lease_epoch"] == op.epoch for op in ops
            ]
            # Runs held DEQUEUED take ops only once a StartDequeued before them started
            # them, except a hand-back or cancel of one that never started.
            dequeued = {r["id"] for r in fenced if r["status"] == "DEQUEUED"}
            moving = {
                op.run_id
                for op, good in zip(ops, ok, strict=True)
                if good and isinstance(op, EndSegment | StartDequeued)
            }
            locked = None
            if moving or claiming:
                # Every queue row this transaction will lock, in one ordered statement.
                locked = self._lock_queues_for(
                    tx, sorted(moving), env, sorted(serves) if claiming else ()
                )
            ended: set[str] = set()
            completed: list[EndSegment] = []
            # The common ops of a batch are held and written a kind at a time, one
            # statement per kind where the backend can (see _Held), before any other op and
            # before the batch's completions and claim, so those see them written.
            pending = _Held()
            for i, op in enumerate(ops):
                if not ok[i] or op.run_id in ended:
                    continue
                if op.run_id in dequeued:
                    if isinstance(op, StartDequeued):
                        self._start_dequeued(tx, op.run_id, now)
                        dequeued.discard(op.run_id)
                        held[op.run_id] = {**held[op.run_id], "holds_slot": 1}
                        continue
                    if not (isinstance(op, EndSegment) and op.outcome in ("handback", "canceled")):
                        ok[i] = False
                        continue
                    if op.outcome == "handback":  # back to its place in the queue
                        ended.add(op.run_id)
                        tx.x("release_dequeued", run_id=op.run_id, now=now)
                        self._notify(tx, held[op.run_id]["env"])
                        continue
                elif isinstance(op, StartDequeued):
                    ok[i] = False  # started already: a replayed op
                    continue
                if isinstance(op, EndSegment):
                    ended.add(op.run_id)
                    if op.outcome == "completed":
                        completed.append(op)  # the hot path: finished together below
                        continue
                if not pending.hold(op):
                    self._write_held(tx, pending, now)
                    self._apply_one(tx, op, now)
            self._write_held(tx, pending, now)
            if completed:
                self._complete_runs(tx, completed, [held[op.run_id] for op in completed], now)
            # The slots this batch gave back are taken again before the same commit: one
            # transaction per flush, not one to end runs and another to start the next.
            claims = (
                self._claim_in(tx, worker_id, env, serves, limit, now, locked, reserve or {})
                if claiming
                else []
            )
        return ok, claims

    def _may_claim(self, tx: Tx, worker_id: str, now: float) -> bool:
        """A worker gets claims only while alive with its lease current on the database
        clock (C10): one declared dead, stopped, or cut off past its lease claims
        nothing, since nothing it does may commit (C4) and a run it took would sit
        under an identity no reaper looks for."""
        return bool(tx.q("worker_may_claim", id=worker_id, now=now))

    def _start_dequeued(self, tx: Tx, run_id: str, now: float) -> None:
        """Start a run held DEQUEUED in the slot of its key that a run ending in this
        batch (or before it) gave back: no limit check, the slot was counted already."""
        row = tx.q("start_dequeued", run_id=run_id, now=now)[0]
        where = {"env": row["env"], "queue": row["queue"]}
        tx.x("take_queue_slot", **where)
        tx.x("take_slot", **where, ckey=row["concurrency_key"])

    def _complete_runs(
        self, tx: Tx, ops: Sequence[EndSegment], rows: Sequence[Row], now: float
    ) -> None:
        """Finish many completed runs with a fixed number of statements: one release per
        (queue, key) from their fenced ``rows``, the updates at once, one cleanup, one
        decrement per parent waitpoint. Queue rows before slot rows, names sorted: the
        order claims lock them in."""
        queues: dict[tuple[str, str], int] = {}
        slots: dict[tuple[str, str, str], int] = {}
        parents: dict[str, int] = {}
        for r in rows:
            if r["holds_slot"]:
                q = (r["env"], r["queue"])
                queues[q] = queues.get(q, 0) + 1
                k = (r["env"], r["queue"], r["concurrency_key"])
                slots[k] = slots.get(k, 0) + 1
            if r["parent_waitpoint_id"]:
                parents[r["parent_waitpoint_id"]] = parents.get(r["parent_waitpoint_id"], 0) + 1
        left = self._complete_rows(tx, ops, queues, slots, parents, now)
        for waitpoint_id, pending in sorted(left.items()):
            if pending <= 0:
                self._complete(tx, waitpoint_id, "completed", None, False, now)

    def _complete_rows(
        self,
        tx: Tx,
        ops: Sequence[EndSegment],
        queues: Mapping[tuple[str, str], int],
        slots: Mapping[tuple[str, str, str], int],
        parents: Mapping[str, int],
        now: float,
    ) -> dict[str, int]:
        """Give back ``queues`` and ``slots`` (counts per queue and per key), mark the runs
        of ``ops`` COMPLETED with their outputs, and lower each parent waitpoint's pending
        children by its count in ``parents``; the parents' counts left. A backend hook:
        PostgreSQL does it all in one round trip."""
        for (env, queue), n in sorted(queues.items()):
            tx.x("give_queue_slots", env=env, queue=queue, n=n)
        for (env, queue, ckey), n in sorted(slots.items()):
            tx.x("give_slots", env=env, queue=queue, ckey=ckey, n=n)
        tx.many(
            "complete_run",
            [{"run_id": op.run_id, "output": op.output, "now": now} for op in ops],
        )
        tx.x("clear_runs_waits", ids=self._list([op.run_id for op in ops]))
        return self._children_done(tx, parents)

    def _children_done(self, tx: Tx, parents: Mapping[str, int]) -> dict[str, int]:
        """Lower each parent waitpoint's pending children, in id order (the order every
        batch locks them in); the counts left, for parents still pending."""
        left: dict[str, int] = {}
        for waitpoint_id, n in sorted(parents.items()):
            rows = tx.q("children_done", id=waitpoint_id, n=n)
            if rows:
                left[waitpoint_id] = int(rows[0]["pending_children"])
        return left

    def _write_held(self, tx: Tx, held: _Held, now: float) -> None:
        """Write what ``held`` holds, a kind at a time, and empty it."""
        if held.steps:
            self._insert_journal_rows(tx, held.steps)
        if held.lines:
            tx.many("insert_event", held.lines)
        if held.waits:
            self._start_waits(tx, held.waits, now)
        if held.suspends:
            self._suspend_runs(tx, held.suspends, now)
        held.clear()

    def _start_waits(self, tx: Tx, ops: list[StartWait], now: float) -> None:
        """Register waits (without children); a backend hook (PostgreSQL: one statement)."""
        for op in ops:
            self._start_wait(tx, op, now)

    def _suspend_runs(self, tx: Tx, ops: list[EndSegment], now: float) -> None:
        """Park runs on their waitpoints, or hand back those whose wait is satisfied
        already; a backend hook (PostgreSQL: one statement)."""
        for op in ops:
            self._end_segment(tx, op, now)

    def _insert_journal_rows(self, tx: Tx, rows: list[Row]) -> None:
        """Insert journal rows; a backend hook (PostgreSQL does it in one statement)."""
        tx.many("insert_journal", rows)

    def _apply_one(self, tx: Tx, op: Op, now: float) -> None:
        if isinstance(op, StepDone):
            tx.x("insert_journal", **_step_row(op))
        elif isinstance(op, LogLine):
            tx.x("insert_event", **_line_row(op))
        elif isinstance(op, SetMetadata):
            tx.x("set_metadata", run_id=op.run_id, metadata=op.metadata, now=now)
        elif isinstance(op, StartWait):
            self._start_wait(tx, op, now)
        elif isinstance(op, EndSegment):
            self._end_segment(tx, op, now)
        else:  # pragma: no cover - a programming error
            raise TypeError(f"unknown op {op!r}")

    def _start_wait(self, tx: Tx, op: StartWait, now: float) -> None:
        status, output = "waiting", None
        if op.new_waitpoint_kind is not None:
            assert op.waitpoint_id is not None
            env = tx.q("slot_of_run", run_id=op.run_id)[0]["env"]
            tx.x(
                "insert_waitpoint",
                id=op.waitpoint_id,
                env=env,
                kind=op.new_waitpoint_kind,
                run_id=op.run_id,
                timeout_at=op.timeout_at,
                idempotency_key=None,
                idempotency_expires_at=None,
                tags="[]",
                pending_children=0,
                now=now,
            )
        if op.children:
            results = self._insert_runs(tx, op.children, now)
            ids = [r.id for r in results]
            op.result_ids = ids
            output = dumps(ids)
            if op.kind == "trigger":
                status = "done"
            else:
                assert op.waitpoint_id is not None
                pending = sum(1 for r in results if not r.is_cached)
                for r in results:
                    if r.is_cached:
                        pending += tx.x(
                            "adopt_child", id=r.id, waitpoint_id=op.waitpoint_id
                        )
                self._raw(
                    tx,
                    "UPDATE waitpoints SET pending_children = :n WHERE id = :id",
                    {"n": pending, "id": op.waitpoint_id},
                )
                if pending == 0:
                    self._complete(tx, op.waitpoint_id, "completed", None, False, now)
        if status == "waiting" and op.waitpoint_id:
            state = tx.q("waitpoint_state", id=op.waitpoint_id)
            if state and state[0]["status"] != "pending":
                status = "done"  # already satisfied (a token completed before the wait)
        tx.x(
            "insert_journal",
            run_id=op.run_id,
            key=_journal_key(op.key),
            kind=op.kind,
            fingerprint=op.fingerprint,
            status=status,
            output=output,
            waitpoint_id=op.waitpoint_id,
            attempt=op.attempt,
            started_at=op.started_at,
            finished_at=now if status == "done" else None,
        )

    def _end_segment(self, tx: Tx, op: EndSegment, now: float) -> None:
        o = op.outcome
        if o == "completed":
            self._finish(tx, op.run_id, RunStatus.COMPLETED, now, output=op.output)
            return
        if o in ("failed", "timed_out", "canceled"):
            self._attempt_failed_event(tx, op, now)
            status = {
                "failed": RunStatus.FAILED,
                "timed_out": RunStatus.TIMED_OUT,
                "canceled": RunStatus.CANCELED,
            }[o]
            self._finish(tx, op.run_id, status, now, error=op.error)
            return
        slot = tx.q("slot_of_run", run_id=op.run_id)[0]
        self._release_slot(tx, slot)
        if o == "retry":
            self._attempt_failed_event(tx, op, now)
            assert op.retry_at is not None
            tx.x("retry_run", run_id=op.run_id, error=op.error, retry_at=op.retry_at, now=now)
        elif o == "handback":
            tx.x("handback_run", run_id=op.run_id, exec_seconds=op.exec_seconds, now=now)
        elif o == "suspend":
            for wp in op.wait_on:
                tx.x("insert_run_wait", waitpoint_id=wp, run_id=op.run_id)
            states = [tx.q("waitpoint_state", id=wp) for wp in op.wait_on]
            if any(s and s[0]["status"] != "pending" for s in states):
                # Satisfied between registering and suspending: replay now, don't park.
                tx.x("clear_run_waits", run_id=op.run_id)
                tx.x("handback_run", run_id=op.run_id, exec_seconds=op.exec_seconds, now=now)
                self._notify(tx, slot["env"])
            else:
                tx.x(
                    "suspend_run",
                    run_id=op.run_id,
                    exec_seconds=op.exec_seconds,
                    wait_reason=op.wait_reason,
                    now=now,
                )
        else:  # pragma: no cover
            raise ValueError(f"unknown outcome {o!r}")
        if o == "handback":
            self._notify(tx, slot["env"])

    def _attempt_failed_event(self, tx: Tx, op: EndSegment, now: float) -> None:
        err = loads(op.error) or {}
        attempt = tx.q("slot_of_run", run_id=op.run_id)[0]["attempt"]
        tx.x(
            "insert_event",
            run_id=op.run_id,
            ts=now,
            kind="attempt_failed",
            attempt=attempt,
            level="error",
            message=plain_text(err.get("message")),
            data=op.error,
        )


    # -- scheduling -----------------------------------------------------------------------
    def tick(self) -> TickReport:
        now = self.now()
        ended: list[str] = []
        with self._transaction() as tx:
            promoted = tx.q("promote_delayed", now=now)
            for env in {r["env"] for r in promoted}:
                self._notify(tx, env)
            expired = tx.q("expire_runs", now=now)
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


def _step_row(op: StepDone) -> Row:
    return {
        "run_id": op.run_id,
        "key": _journal_key(op.key),
        "kind": op.kind,
        "fingerprint": op.fingerprint,
        "status": "done",
        "output": op.output,
        "waitpoint_id": None,
        "attempt": op.attempt,
        "started_at": op.started_at,
        "finished_at": op.finished_at,
    }


def _journal_key(key: str) -> str:
    """A step's journal key, which a replay looks up as task code spells it: escaping a
    NUL would lose the match, and PostgreSQL refuses it raw, so no backend stores one
    (the committer then fails that run alone: ``unstorable_data``)."""
    if "\x00" in key:
        raise ValueError(f"a step name cannot contain NUL: {key!a}")
    return key


def _line_row(op: LogLine) -> Row:
    return {
        "run_id": op.run_id,
        "ts": op.ts,
        "kind": op.kind,
        "attempt": op.attempt,
        "level": op.level,
        "message": plain_text(op.message),
        "data": op.data,
    }


class _Held:
    """A commit batch's common ops, held to be written a kind at a time: step results,
    log lines, wait registrations (without children), suspends, in that order, and
    before any other op. Ops of different runs touch different rows, and within a run
    only one order matters, which that one keeps: a run's wait registration (its
    waitpoint) before its suspend reads it. A step and a wait are journal rows of
    different keys, and a suspend is a run's last op."""

    def __init__(self) -> None:
        self.steps: list[Row] = []
        self.lines: list[Row] = []
        self.waits: list[StartWait] = []
        self.suspends: list[EndSegment] = []

    def hold(self, op: Op) -> bool:
        """Hold ``op`` if it is one of the common kinds; False to apply it now."""
        if isinstance(op, StepDone):
            self.steps.append(_step_row(op))
        elif isinstance(op, LogLine):
            self.lines.append(_line_row(op))
        elif isinstance(op, StartWait) and not op.children:
            self.waits.append(op)
        elif isinstance(op, EndSegment) and op.outcome == "suspend":
            self.suspends.append(op)
        else:
            return False
        return True

    def clear(self) -> None:
        self.steps, self.lines, self.waits, self.suspends = [], [], [], []
