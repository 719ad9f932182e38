"""PostgreSQL's hooks for the events part: fewer round trips where SQLite pays none. A
single publish is one statement committed on its own when nothing needs a transaction
(``ev_publish_alone``); a batch's runs go by COPY as its events are planned, then its
events (each with its fan-out) by COPY (``_plan_and_insert``), or when one of their ids
is taken in one INSERT with the waits for their names. A batch by COPY takes its names'
locks, reads the task fingerprint, draws its sequence numbers, reads the waits and sets
its idle bound in its first statement, sent with BEGIN (``_lock_and_subscribers``), and
its NOTIFY goes with COMMIT (``postgres._late_begin_transaction``): six round trips where
ten were. Another publish locks its names and reads the task fingerprint in one, and a
single event is inserted by the statement that reads the waits for its name.
Mixed into ``PostgresStore`` ahead of ``SqlStore``."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg

from .._serde import dumps
from ._events_base import EventPlanner, EventWait, NewEvent, PublishResult
from ._rows import Tx
from ._sql_events import (
    EventsMixin,
    _Batch,
    _event_rows,
    _Plan,
    fanout_json,
    plan_event,
)
from ._types import NewRun, TaskDef

_new = object.__new__
# _run_row's keys that are not runs columns (the statement sets those itself).
_NOT_COLUMNS = ("now",)
# Milliseconds a publish may spend planning one event for one subscriber (a CEL filter
# took 0.7 ms on 2 shared cores, 1.7 ms profiled) before its session counts as stalled.
_PLAN_MS = 10
# ev_copy's columns' types, in its order (binary COPY sends values typed).
_EVENT_TYPES = ("int8", "text", "text", "text", "text", "float8", "float8", "int4", "float8",
                "text")


class _Taken(Exception):
    """A batch's COPY met an event id still deduplicating: its transaction rolls back."""


class _Copying:
    """A batch publish by COPY under way (publish_events): what the statement taking its
    names' locks drew ahead for _plan_and_insert and _before_planning."""

    __slots__ = ("bound", "drawn", "events", "n", "results", "waits")

    def __init__(self, events: int, n: int) -> None:
        self.events = events  # the batch's events, and n its distinct ids
        self.n = n
        self.drawn: list[int] | None = None  # sequence numbers, in order
        self.waits: list[EventWait] | None = None  # None: to be read after the locks
        self.bound: str | None = None  # the idle bound set for the transaction
        # The results of the events whose runs were streamed, by id (_planned_runs).
        self.results: dict[str, PublishResult] = {}


# A batch's events go by COPY in publish_events's own transaction (which it publishes
# again on _Taken), not in another caller's (_publish_in), nor again: None there.
_COPYING: ContextVar[_Copying | None] = ContextVar("outlast_events_copying", default=None)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a batch is published (unless it was off
    already). A batch's plan is thousands of objects (records, runs, fan-outs) alive until
    its commit and free of cycles; their allocations set off collections, each full one
    traversing the whole heap, to find nothing. Another thread that turns the collector
    off meanwhile finds it on again after the batch."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _wait(r: Any) -> EventWait:
    return EventWait(r["waitpoint_id"], r["name"], r["match_path"], r["match_value"], r["expr"])


class PgEventsMixin(EventsMixin):
    _pool: Any  # PostgresStore's connection pool (autocommit connections)
    _channel: str  # its NOTIFY channel
    _idle_tx_ms: int  # its sessions' idle_in_transaction_session_timeout; 0: none set

    def _publish_alone(self, env: str, event: NewEvent, planner: EventPlanner
                       ) -> PublishResult | None:
        # Planned with the subscribers this process read last; the statement checks they
        # are still current. Anything needing more than the event, its deliveries and
        # plain runs (cancels, tags, keys, a queue row not yet ensured) takes the
        # transaction, as does any refusal of the statement (see ev_publish_alone). A
        # debounced or batched subscriber's run takes it too: its group row is upserted,
        # and the run may join the group's pending run (_sql_groups, _sql_events._joined).
        planned = self._plan_alone(env, event, planner)
        if planned is None:
            return None
        version, now, plan, runs = planned.version, planned.now, planned.plan, planned.runs
        for r in runs:
            if (r.tags or r.idempotency_key is not None or r.trace_context or r.delay
                    or r.cancel_paths
                    or r.group is not None  # it may join a pending run (_sql_groups)
                    or (r.env, r.queue, r.concurrency_key) not in self._ensured):
                return None
        rows = []
        for r in runs:
            row = self._run_row(r, now)
            for k in _NOT_COLUMNS:
                del row[k]
            rows.append(row)
        conn = self._pool.getconn()  # autocommit: the statement is its own transaction
        try:
            found = conn.execute(self.q["ev_publish_alone"], {
                "env": env, "id": event.id, "name": event.name, "data": event.data,
                "now": now, "dedup_until": now + event.dedup_seconds,
                "expires_at": now + event.retention_seconds, "tasks_version": version,
                "fanout": fanout_json(plan), "runs": dumps(rows), "channel": self._channel,
            }).fetchall()
        finally:
            self._pool.putconn(conn)  # discards it if the statement broke it
        if not found or found[0]["seq"] is None:
            return None
        if runs:
            self.wake_local()
        return PublishResult(event.id, False, [r.id for r in runs])

    def _late_begin_transaction(self) -> AbstractContextManager[Tx]:
        """A transaction whose BEGIN goes with its first statement (PostgresStore's)."""
        raise NotImplementedError

    def _idle_allowance(self, events: int, subscribers: int) -> str | None:
        # A publish plans its events in Python between two statements of its transaction
        # (CEL filters among it): seconds for thousands of events, which the session's
        # idle bound (_pg_session) would take for a stalled process and end, failing the
        # publish on every retry. A batch with that much to plan gets, for this
        # transaction only, the bound plus a budget per event and subscriber.
        extra = events * max(1, subscribers) * _PLAN_MS
        if self._idle_tx_ms and extra * 2 > self._idle_tx_ms:
            return str(min(self._idle_tx_ms + extra, 2**31 - 1))
        return None

    def _before_planning(self, tx: Tx, events: int, subscribers: int) -> None:
        ms = self._idle_allowance(events, subscribers)
        copying = _COPYING.get()
        if ms is not None and (copying is None or copying.bound != ms):
            tx.q("allow_idle_in_transaction", ms=ms)

    def _lock_and_subscribers(self, tx: Tx, env: str, names: list[str], now: float
                              ) -> list[TaskDef]:
        copying = _COPYING.get()
        if copying is not None and copying.drawn is None:
            # A batch by COPY: its locks, its sequence numbers, the waits for its names
            # and (with the subscribers this process read last) its idle bound in the
            # transaction's first statement, which BEGIN goes with: one round trip
            # where these took four (ev_lock_seqs_and_waits).
            cached = self._subscriber_cache().get(env)
            ms = None if cached is None else self._idle_allowance(copying.events,
                                                                  len(cached[1]))
            rows = tx.q("ev_lock_seqs_and_waits", env=env, names=names, now=now,
                        n=copying.n, ms=ms)
            head = rows[0]
            copying.bound = ms if head["bounded"] else None
            copying.drawn = sorted(head["seqs"] or ())
            if head["ok"]:  # else another lock holder committed meanwhile: read again
                copying.waits = [_wait(r) for r in rows if r["waitpoint_id"] is not None]
            return self._subscribers(tx, env, head["v"])
        if len(names) == 1:
            rows = tx.q("ev_lock_and_version", env=env, name=names[0], now=now)
        else:
            rows = tx.q("ev_lock_names_and_version", env=env, names=names, now=now)
        return self._subscribers(tx, env, rows[0]["v"])

    def _insert_events(self, tx: Tx, batch: _Batch, events: Sequence[NewEvent],
                       plans: dict[str, _Plan]) -> dict[str, int]:
        if len(events) == 1:
            return super()._insert_events(tx, batch, events, plans)
        env, now = batch.env, batch.now
        fresh: dict[str, list[Any]] = {}  # the first of a batch's repeats
        for row in _event_rows(batch, events, plans):
            fresh.setdefault(row[0], row)
        names = sorted({e.name for e in events})
        seqs: dict[str, int] = {}
        waits: dict[str, list[EventWait]] = {n: [] for n in names}
        for r in tx.q("ev_insert_batch_and_waits", env=env, now=now,
                      rows=dumps(list(fresh.values())), names=names):
            if r["seq"] is not None:
                seqs[r["id"]] = int(r["seq"])
            else:
                waits[r["name"]].append(EventWait(r["waitpoint_id"], r["name"], r["match_path"],
                                                  r["match_value"], r["expr"]))
        batch.waits.update(waits)
        taken = [i for i in fresh if i not in seqs]
        if taken:  # a retry, or an id past its window (released here, then reused)
            tx.x("ev_release_keys", env=env, ids=taken, now=now)
            seqs.update(self._insert_event_rows(tx, batch, [fresh[i] for i in taken]))
        return seqs

    def publish_events(self, env: str, events: Sequence[NewEvent], planner: EventPlanner
                       ) -> list[PublishResult]:
        if len(events) > 1:
            copying = _COPYING.set(_Copying(len(events), len({e.id for e in events})))
            try:
                now = self.now()
                with _collector_paused(), self._late_begin_transaction() as tx:
                    results, batch = self._publish_in(tx, env, events, planner, now)
                self._published(batch)
                return results
            except _Taken:
                # The batch's COPY met an id still deduplicating (a retry; a concurrent
                # publisher's, once it committed) and its transaction rolled back: again,
                # its events by INSERT, which tells duplicates from ids past their window.
                pass
            finally:
                _COPYING.reset(copying)
        return super().publish_events(env, events, planner)

    def _plan_and_insert(self, tx: Tx, batch: _Batch, events: Sequence[NewEvent],
                         planner: EventPlanner) -> tuple[dict[str, _Plan], dict[str, int]]:
        # A batch's runs go by COPY as their events are planned, then the events by COPY:
        # the server inserts the runs (most of its work) while the next events are
        # planned. Runs do not depend on their event's row, and nothing reads either
        # before the commit. (Events first, planned as their rows were written, left the
        # server the runs' COPY alone afterwards.) An event some task cancels on, or
        # whose runs need a statement of their own (a group, an idempotency key), stops
        # the stream: its runs and the later events' go as before (_publish_one, _flush),
        # so a cancel still meets the runs of the events before it and not after.
        # Sequence numbers are drawn ahead, as an INSERT draws them, in order. COPY has
        # no ON CONFLICT: a taken id fails it (_Taken), and publish_events publishes the
        # batch again by INSERT. No savepoint to fall back to in this transaction: it
        # would cost every batch two round trips, for the sake of a retried one.
        copying = _COPYING.get()
        if copying is None or copying.drawn is None:
            return super()._plan_and_insert(tx, batch, events, planner)
        names = sorted({e.name for e in events})
        found = copying.waits
        if found is None:
            found = [_wait(r) for r in tx.q("ev_seqs_and_waits", env=batch.env, names=names,
                                            n=0)]
        waits: dict[str, list[EventWait]] = {n: [] for n in names}
        for w in found:
            waits[w.name].append(w)
        plans: dict[str, _Plan] = {}
        seqs: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []  # the events' COPY rows
        streamed: list[NewRun] = []
        planned = _planned_runs(batch, events, planner, copying, (plans, seqs, rows),
                                streamed)
        conn = tx.conn  # type: ignore[attr-defined]  # PostgresStore's _Tx
        try:
            first = next(planned, None)  # None: every event planned, no run to stream
            if first is not None:  # the COPY plans the rest as it goes
                self._copy_runs(tx, itertools.chain((first,), planned), batch.now)
                self._runs_inserted(tx, streamed, batch.now)
                batch.ensured.update((r.env, r.queue, r.concurrency_key) for r in streamed)
                batch.woke = True
            with conn.cursor() as cur, cur.copy(self.q["ev_copy"]) as copy:
                copy.set_types(_EVENT_TYPES)
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation as exc:
            raise _Taken from exc
        batch.waits.update(waits)
        return plans, seqs

    def _publish_one(
        self, tx: Tx, batch: _Batch, e: NewEvent, seq: int | None, plans: dict[str, _Plan],
        planner: EventPlanner,
    ) -> PublishResult:
        # An event whose runs were streamed has its result already (_planned_runs): what
        # is left of the base's work is the waits for its name, where there are any.
        copying = _COPYING.get()
        done = None if copying is None or seq is None else copying.results.pop(e.id, None)
        if done is None:
            return super()._publish_one(tx, batch, e, seq, plans, planner)
        record = plans.pop(e.id)[0]
        waits = batch.waits.get(record.name)
        if waits is None or waits:
            self._resume_waits(tx, batch, record, planner)
        return done

    def _copy_runs(self, tx: Tx, runs: Iterable[NewRun], now: float) -> None:
        """COPY ``runs`` (no idempotency key, no group), as they come (PostgresStore's)."""
        raise NotImplementedError

    def _insert_one(self, tx: Tx, batch: _Batch, row: dict[str, Any], name: str
                    ) -> int | None:
        rows = tx.q("ev_insert_one_and_waits", **row, event_name=name)
        if not rows:
            return None
        batch.waits[name] = [
            EventWait(r["waitpoint_id"], r["name"], r["match_path"], r["match_value"], r["expr"])
            for r in rows if r["waitpoint_id"] is not None
        ]
        return int(rows[0]["seq"])


def _planned_runs(batch: _Batch, events: Sequence[NewEvent], planner: EventPlanner,
                  copying: _Copying,
                  into: tuple[dict[str, _Plan], dict[str, int], list[tuple[Any, ...]]],
                  streamed: list[NewRun]) -> Iterator[NewRun]:
    """Plan each distinct event (its plan, seq and COPY row into ``into``) and yield its
    runs, appended to ``streamed`` too, while they can go by COPY now (_plan_and_insert);
    the events whose runs were yielded go in ``batch.written``, with their results (as
    the base's _publish_one makes them) in ``copying.results``."""
    plans, seqs, rows = into
    env, now, subscribers = batch.env, batch.now, batch.subscribers
    drawn, results, created = copying.drawn, copying.results, batch.created
    assert drawn is not None
    streaming = True
    for e in events:
        eid = e.id
        if eid in plans:  # a repeat within the batch: the first one counts
            continue
        plans[eid] = (record, plan) = plan_event(batch, e, planner)
        seq = seqs[eid] = drawn[len(seqs)]
        rows.append((seq, env, eid, e.name, e.data, now, now + e.dedup_seconds, 1,
                     now + e.retention_seconds, fanout_json(plan)))
        if not streaming:
            continue
        for f in plan:
            run = f.run
            if run is not None and (run.group is not None or run.idempotency_key is not None):
                streaming = False
                break
        else:
            streaming = not planner.cancel_matches(record, subscribers)
        if not streaming:
            continue
        batch.written.add(eid)
        run_ids = []
        for f in plan:
            run = f.run
            if run is not None:
                run_ids.append(run.id)
                streamed.append(run)
                yield run
        record.__dict__["seq"] = seq  # as _publish_one sets it (frozen: no copy)
        created[eid] = run_ids
        result = _new(PublishResult)  # as _publish_one's, without the frozen __init__
        result.__dict__.update(id=eid, duplicate=False, run_ids=run_ids)
        results[eid] = result
