"""SQLite's hooks for the events part: a single publish without the batch machinery, and
a fan-out's runs in one statement.

A trigger on SQLite is one autocommitted INSERT; a publish needs a transaction (the event
and its runs commit together). This path keeps that transaction to what it must hold:
BEGIN IMMEDIATE, the event (whose statement also returns the task fingerprint and whether
anyone waits on its name), the runs, COMMIT. The fan-out is planned before BEGIN with the
subscribers this process read last; the statement's fingerprint says whether that plan
still stands.

A fan-out's runs are alike but for id, payload and metadata, and most need nothing but
their row: those go in one statement of JSON rows (``insert_lean_runs``), where binding
insert_run's 28 named parameters per run, most of them NULL, cost more than the insert
itself. Mixed into ``SQLiteStore`` ahead of ``SqlStore``."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from .._serde import dumps
from ._events_base import EventPlanner, NewEvent, PublishResult
from ._rows import Tx
from ._sql_events import EventsMixin, _Batch, _task_of, fanout_json
from ._types import NewRun

# Up to this many lean runs go one by one, their parameters bound by position
# (insert_lean_run); more go in one statement of JSON rows (insert_lean_runs). A single
# publish's two runs: about 110k instructions fewer than from JSON (named parameters
# saved about half of that).
FEW = 4


class _Refused(Exception):
    """The planned publish does not stand (its id is taken, or the task definitions
    changed): rolled back, and the publish takes the general path."""


class SqliteEventsMixin(EventsMixin):
    def _publish_alone(self, env: str, event: NewEvent, planner: EventPlanner
                       ) -> PublishResult | None:
        # Anything needing more than the event and lean runs (cancels; tags, keys, a
        # debounce or batch group, ...: see lean) takes the general path, as does a
        # duplicate id or a changed definition. Waits on the name are served here, their
        # rows read only when some exist.
        planned = self._plan_alone(env, event, planner)
        if planned is None:
            return None
        version, now, plan, runs = planned.version, planned.now, planned.plan, planned.runs
        record, subscribers = planned.record, planned.subscribers
        if not all(lean(r) for r in runs):
            return None
        result: PublishResult | None = None
        woke = bool(runs)
        with contextlib.suppress(_Refused), self._transaction() as tx:
            found = tx.q("ev_insert_alone", env=env, id=event.id, name=event.name,
                         data=event.data, now=now, dedup_until=now + event.dedup_seconds,
                         expires_at=now + event.retention_seconds, fanout=fanout_json(plan))
            if not found or found[0]["v"] != version:
                raise _Refused  # rolls the event back
            if runs:
                self._insert_lean(tx, env, runs, now)
            if found[0]["waiting"]:
                batch = _Batch(env, subscribers, now)
                object.__setattr__(record, "seq", int(found[0]["seq"]))
                self._resume_waits(tx, batch, record, planner)  # notifies what it resumed
                woke = woke or batch.woke
            result = PublishResult(event.id, False, [r.id for r in runs])
        if result is None:
            return None
        # Committed (as _published): the queue and slot rows exist, wake this process.
        self._ensured.update((r.env, r.queue, r.concurrency_key) for r in runs)
        if woke:
            self.wake_local()
        return result

    def _flush(self, tx: Tx, batch: _Batch) -> None:
        runs = batch.runs
        if not runs or not all(lean(r) for r in runs):
            super()._flush(tx, batch)
            return
        runs.sort(key=_task_of)  # the runs of one task side by side in the indexes
        self._insert_lean(tx, batch.env, runs, batch.now)
        batch.ensured.update((r.env, r.queue, r.concurrency_key) for r in runs)
        batch.runs = []
        batch.woke = True

    def _insert_lean(self, tx: Tx, env: str, runs: Sequence[NewRun], now: float) -> None:
        """Insert ``lean`` runs of ``env``, their queue and slot rows and their wake-up."""
        if len(runs) <= FEW:
            insert_few(tx, env, runs, now)
        else:
            insert_lean(tx, env, runs, now)
        slots = {(r.env, r.queue, r.concurrency_key) for r in runs} - self._ensured
        tx.many("ensure_queue", [{"env": e, "queue": q, "now": now} for e, q in
                                 {(e, q) for e, q, _ in slots}])
        tx.many("ensure_slot", [{"env": e, "queue": q, "ckey": k} for e, q, k in slots])
        self._notify(tx, env)


def insert_lean(tx: Tx, env: str, runs: Sequence[NewRun], now: float) -> None:
    """Insert ``lean`` runs of ``env`` in one statement (their rows only)."""
    tx.x("insert_lean_runs", env=env, now=now, rows=dumps([
        [r.id, r.task_id, r.queue, r.payload, r.metadata, r.max_attempts, r.priority,
         r.concurrency_key, r.ttl or None, r.max_duration, r.depth, r.version] for r in runs]))


def insert_few(tx: Tx, env: str, runs: Sequence[NewRun], now: float) -> None:
    """Insert a few ``lean`` runs of ``env`` one by one, their parameters by position
    (``insert_lean_run``): SQLite's ``_Tx`` takes them as its connection does."""
    conn: sqlite3.Connection = cast(Any, tx).conn
    conn.executemany(cast(Any, tx).queries["insert_lean_run"], [
        (r.id, env, r.task_id, r.queue, r.payload, r.metadata, r.max_attempts, r.priority,
         r.concurrency_key, r.ttl or None, r.max_duration, r.depth, r.version, now)
        for r in runs])


def lean(r: NewRun) -> bool:
    """Whether a run needs nothing but its row (``insert_lean_runs``): no tags, idempotency
    key, trace, cancel_on keys, group, delay or parent, as a fan-out's usually are."""
    return not (r.tags or r.idempotency_key is not None or r.trace_context or r.cancel_paths
                or r.group is not None or r.delay or r.parent_id is not None
                or r.root_id is not None or r.replayed_from is not None
                or r.parent_waitpoint_id is not None)
