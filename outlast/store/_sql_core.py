"""What every part of the SQL store shares: the backend hooks, writing new runs, and
ending runs (used by commits, cancels, expiry and reaping alike).

The store's parts (claims, commits, waitpoints, reading, workers, stats, the API,
schedules) are mixins over this one typed base, so a part calls another's helper by a
declared signature, not through ``Any`` attributes.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from .._serde import dumps, loads
from ..runs import RunStatus
from ._match import payload_keys
from ._rows import (
    Row,
    Tx,
    _error,
    load_queries,
)
from ._versions_base import VersionScope
from .base import (
    Claim,
    NewRun,
    Store,
    TriggerResult,
)


class SqlCore(Store):
    """The typed base of the SQL store's parts; ``SqlStore`` puts them together."""

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

    def dead_workers(self, alive: Sequence[Row]) -> list[str]:
        """The ids among ``alive`` (rows of workers) whose life lock is free: they died."""
        return []

    @abc.abstractmethod
    def _insert_process(self, tx: Tx, process_id: str, kind: str, env: str) -> None:
        """Record a process and the release it runs (``_sql_schema.SchemaMixin``)."""

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
            "version": r.version,
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

    def _insert_many_alone(self, runs: Sequence[NewRun], now: float) -> bool:
        """``_insert_alone`` for several runs that need nothing else, in one statement
        committed on its own; False if the backend has no such shortcut."""
        return False

    @abc.abstractmethod
    def _insert_grouped(self, tx: Tx, runs: Sequence[NewRun], now: float
                        ) -> list[TriggerResult]:
        """``_insert_runs`` for runs some of which join a debounce or batch group
        (``_sql_groups.GroupsMixin``)."""

    def _insert_keyed(self, tx: Tx, r: NewRun, now: float) -> TriggerResult:
        """Insert a run with an idempotency key, or find the active run holding the key
        (``is_cached``), after releasing a key whose TTL passed or whose run ended without
        success. The key's run is reached only through the unique index, as the upsert's
        arbiter: a lookup by (env, task_id, key) left the index to PostgreSQL's planner,
        which with statistics older than a task's runs scanned runs_env_task, every run
        of the task per trigger (8,000 keyed runs in a batch took 29 s, then 109 s)."""
        row = self._run_row(r, now)
        for _ in range(3):
            got = tx.q("upsert_run_idempotent", **row)[0]
            if got["id"] == r.id:
                return TriggerResult(r.id, False)
            if got["idempotency_active"]:
                return TriggerResult(got["id"], True)
            # Released: the next round inserts, or finds a concurrent trigger's run.
        raise RuntimeError(f"idempotency key {r.idempotency_key!r}: no stable holder")

    def _insert_runs(self, tx: Tx, runs: Sequence[NewRun], now: float) -> list[TriggerResult]:
        if any(r.group is not None for r in runs):
            return self._insert_grouped(tx, runs, now)
        results: list[TriggerResult] = []
        plain: list[NewRun] = []
        inserted: list[NewRun] = []
        for r in runs:
            if r.idempotency_key is None:
                plain.append(r)
                inserted.append(r)
                results.append(TriggerResult(r.id, False))
                continue
            result = self._insert_keyed(tx, r, now)
            if not result.is_cached:
                inserted.append(r)
            results.append(result)
        if plain:
            self._insert_plain(tx, plain, now)
        self._runs_inserted(tx, inserted, now)
        return results

    def _runs_inserted(self, tx: Tx, inserted: Sequence[NewRun], now: float) -> None:
        """What goes with runs just inserted: their tags, traces and cancel keys, their
        queue and slot rows, the NOTIFY."""
        tags = [{"env": r.env, "tag": t, "run_id": r.id} for r in inserted for t in r.tags]
        if tags:
            self._insert_tags(tx, tags)
        traced = [{"run_id": r.id, "env": r.env, "traceparent": r.trace_context}
                  for r in inserted if r.trace_context]
        if traced:
            tx.many("insert_run_trace", traced)
        keys = [{"env": r.env, "task_id": r.task_id, "path": path, "value": value,
                 "run_id": r.id}
                for r in inserted if r.cancel_paths
                for path, value in payload_keys(r.cancel_paths, loads(r.payload))]
        if keys:
            tx.many("insert_run_cancel_key", keys)
        slots = {(r.env, r.queue, r.concurrency_key) for r in inserted} - self._ensured
        queues = {(e, q) for e, q, _ in slots}
        tx.many("ensure_queue", [{"env": e, "queue": q, "now": now} for e, q in queues])
        tx.many("ensure_slot", [{"env": e, "queue": q, "ckey": k} for e, q, k in slots])
        for env in {r.env for r in inserted if not r.delay}:
            self._notify(tx, env)

    @abc.abstractmethod
    def _raw(self, tx: Tx, sql: str, params: Mapping[str, Any]) -> list[Row]: ...

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
        ended = tx.q(
            "end_run",
            run_id=run_id,
            status=str(status),
            output=output,
            error=error,
            now=now,
            hooks_due=1 if hooks_due else 0,
        )
        if ended and self.dialect != "postgres":  # PostgreSQL's end_run adds it itself
            tx.x("usage_outbox_add", ids=self._list([run_id]))
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
        self._attempt_ended(tx, run_id, now, message, error)
        if slot["attempt"] >= slot["max_attempts"]:
            self._finish(tx, run_id, RunStatus.FAILED, now, error=error, hooks_due=True)
            return run_id
        self._release_slot(tx, slot)
        tx.x("retry_run", run_id=run_id, error=error, retry_at=now, now=now)
        return None

    def _attempt_ended(
        self, tx: Tx, run_id: str, now: float, message: str | None, error: str | None
    ) -> None:
        """The event that ends a failed (retried, timed-out, cancelled, lost) attempt, with
        the seconds that attempt executed: read before the run's row changes."""
        row = tx.q("attempt_active", run_id=run_id, now=now)[0]
        tx.x(
            "insert_attempt_event",
            run_id=run_id,
            ts=now,
            kind="attempt_failed",
            attempt=row["attempt"],
            level="error",
            message=message,
            data=error,
            active_seconds=max(0.0, float(row["active"] or 0.0)),
        )

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


    def _commit_transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """The transaction of a worker's commit batch (``apply_and_claim``); a backend
        hook: PostgreSQL sends it in pipeline mode, saving round trips."""
        return self._transaction()

    def _take_offer(self, tx: Tx, worker_id: str, offer: bool) -> Any:
        """Send the taking back of ``worker_id``'s offer to triggers, if it made one or
        makes one now; a handle for ``_offer_settled``, None if there is nothing to do.
        A backend hook: only PostgreSQL's triggers hand runs over (``worker_offers``)."""
        return None

    def _offer_settled(self, tx: Tx, taken: Any, worker_id: str, env: str,
                       serves: Mapping[str, Sequence[str]], scope: VersionScope | None,
                       short: bool) -> list[Claim]:
        """After the claim: the run a trigger handed over on the offer taken back (if
        the worker may not have heard of it), and a new offer if the claim came ``short``
        of its limit. A backend hook (see ``_take_offer``)."""
        return []

    def _may_claim_and_lock(
        self, tx: Tx, worker_id: str, now: float, env: str, names: Sequence[str]
    ) -> tuple[bool, list[Row] | None]:
        """For a claim whose batch holds no run: whether the worker may claim
        (``_may_claim``), and if so the queue rows ``names`` of ``env`` locked for it
        (``_lock_queues_for``). A backend hook: PostgreSQL sends both at once."""
        if not self._may_claim(tx, worker_id, now):
            return False, None
        return True, self._lock_queues_for(tx, [], env, names)

    def _may_claim(self, tx: Tx, worker_id: str, now: float) -> bool:
        """A worker gets claims only while alive with its lease current on the database
        clock (C10): one declared dead, stopped, or cut off past its lease claims
        nothing, since nothing it does may commit (C4) and a run it took would sit
        under an identity no reaper looks for."""
        return bool(tx.q("worker_may_claim", id=worker_id, now=now))

