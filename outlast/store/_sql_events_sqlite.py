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
import re
import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from .._ids import new_ids
from .._serde import dumps
from ._events_base import EventPlanner, NewEvent, PublishResult, run_metadata
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

    def _publish_in(self, tx: Tx, env: str, events: Sequence[NewEvent],
                    planner: EventPlanner, now: float) -> tuple[list[PublishResult], _Batch]:
        if len(events) > 1:
            done = self._publish_plain(tx, env, events, planner, now)
            if done is not None:
                return done
        return super()._publish_in(tx, env, events, planner, now)

    def _publish_plain(self, tx: Tx, env: str, events: Sequence[NewEvent],
                       planner: EventPlanner, now: float
                       ) -> tuple[list[PublishResult], _Batch] | None:
        """A batch whose events are only rows: every subscriber of each name takes the
        event as it is, with a lean run (``Planner.plain_runs``), nothing cancels on the
        names and no run waits on them, its ids are distinct and none deduplicates. Then
        an event is its row and its subscribers' run rows, written as lists (no record,
        run or fan-out objects per event), the events in statements of many rows
        (``ev_insert_values``). None, having written nothing, when the batch is not so:
        the general path then (``_publish_in``)."""
        subscribers = self._lock_and_subscribers(tx, env, [], now)
        shapes: dict[str, _Shape] = {}
        by_task: dict[str, list[list[Any]]] = {}
        for name in {e.name for e in events}:
            blanks = planner.plain_runs(subscribers, name)
            if (blanks is None or not all(lean(r) for r in blanks)
                    or tx.q("ev_waits", env=env, name=name)):
                return None
            shapes[name] = _Shape(blanks, by_task)
        if len({e.id for e in events}) < len(events):
            return None  # a repeat answers with the first's runs: the general path
        ids = new_ids("run", sum(len(shapes[e.name].tasks) for e in events))
        taken = 0
        values: list[Any] = []
        results: list[PublishResult] = []
        for e in events:
            shape = shapes[e.name]
            mine = ids[taken:taken + len(shape.tasks)]
            taken += len(mine)
            metadata = run_metadata(e.id, e.name)
            for rows, (task_id, queue, tail), run_id in zip(shape.rows, shape.tasks, mine,
                                                            strict=True):
                rows.append([run_id, task_id, queue, e.data, metadata, *tail])
            values += (e.id, e.name, e.data, now + e.dedup_seconds,
                       now + e.retention_seconds, shape.fanout.format(*mine))
            result = object.__new__(PublishResult)  # no frozen __init__, once per event
            result.__dict__.update(id=e.id, duplicate=False, run_ids=mine)
            results.append(result)
        conn: sqlite3.Connection = cast(Any, tx).conn
        conn.execute("SAVEPOINT outlast_plain_batch")
        if insert_events(conn, cast(Any, tx).queries, env, now, values) < len(events):
            # An id still deduplicating (a retry; or past its window, to be released):
            # undone, and the general path tells which.
            conn.execute("ROLLBACK TO outlast_plain_batch")
            conn.execute("RELEASE outlast_plain_batch")
            return None
        conn.execute("RELEASE outlast_plain_batch")
        batch = _Batch(env, subscribers, now)
        runs = [row for rows in by_task.values() for row in rows]
        if runs:
            insert_lean_rows(tx, env, runs, now)
            slots = {s for shape in shapes.values() for s in shape.slots}
            self._lean_inserted(tx, env, slots, now)
            batch.ensured = slots
            batch.woke = True
        return results, batch

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
        self._lean_inserted(tx, env, {(r.env, r.queue, r.concurrency_key) for r in runs}, now)

    def _lean_inserted(self, tx: Tx, env: str, slots: set[tuple[str, str, str]], now: float
                       ) -> None:
        """What goes with lean runs of ``env`` just inserted: their queue and slot rows
        (``slots``: env, queue, concurrency key), their wake-up."""
        slots = slots - self._ensured
        tx.many("ensure_queue", [{"env": e, "queue": q, "now": now} for e, q in
                                 {(e, q) for e, q, _ in slots}])
        tx.many("ensure_slot", [{"env": e, "queue": q, "ckey": k} for e, q, k in slots])
        self._notify(tx, env)


def insert_lean(tx: Tx, env: str, runs: Sequence[NewRun], now: float) -> None:
    """Insert ``lean`` runs of ``env`` in one statement (their rows only)."""
    insert_lean_rows(tx, env, [
        [r.id, r.task_id, r.queue, r.payload, r.metadata, r.max_attempts, r.priority,
         r.concurrency_key, r.ttl or None, r.max_duration, r.depth, r.version] for r in runs],
        now)


def insert_lean_rows(tx: Tx, env: str, rows: list[list[Any]], now: float) -> None:
    """Insert lean runs given as insert_lean_runs's rows: [id, task_id, queue, payload,
    metadata, *_tail(run)]."""
    tx.x("insert_lean_runs", env=env, now=now, rows=dumps(rows))


def _tail(r: NewRun) -> tuple[Any, ...]:
    """A lean run's row after its metadata (insert_lean_runs, as insert_lean writes it),
    the same for every run of a task's defaults."""
    return (r.max_attempts, r.priority, r.concurrency_key, r.ttl or None, r.max_duration,
            r.depth, r.version)


class _Shape:
    """What the events of one name do in a plain batch (``_publish_plain``): per
    subscriber its task, queue and run row's tail, the rows list of its task, and the
    event's fan-out as a format taking the run ids (run ids are letters, digits and _,
    so they need no JSON escaping)."""

    __slots__ = ("fanout", "rows", "slots", "tasks")

    def __init__(self, blanks: Sequence[NewRun], by_task: dict[str, list[list[Any]]]) -> None:
        self.tasks = [(r.task_id, r.queue, _tail(r)) for r in blanks]
        self.rows = [by_task.setdefault(r.task_id, []) for r in blanks]
        self.slots = {(r.env, r.queue, r.concurrency_key) for r in blanks}
        # The log's [task_id, run_id, outcome, reason] per subscriber, as fanout_json
        # writes it, with {} where the run id goes (braces of a task id doubled).
        self.fanout = dumps([[r.task_id, "\x00", "run", None] for r in blanks]).replace(
            "{", "{{").replace("}", "}}").replace('"\\u0000"', '"{}"')


_VALUES = re.compile(r"(.*\bVALUES\s*)(\(.*?\))(.*)", re.S)
_PER_EVENT = 6  # ev_insert_values's parameters per event (?3 to ?8)
_ROWS = 128  # events per statement at most: 2 + 6 x 128 parameters, within SQLite's 999
_events_sql: dict[tuple[str, int], str] = {}


def _insert_sql(template: str, n: int) -> str:
    """ev_insert_values for ``n`` events: its VALUES row repeated, numbered per event."""
    key = (template, n)
    sql = _events_sql.get(key)
    if sql is None:
        m = _VALUES.fullmatch(template)
        if m is None:
            raise ValueError("ev_insert_values has no VALUES row")
        head, row, tail = m.groups()

        def numbered(i: int) -> str:  # ?1 and ?2 (env, now) are shared by every event
            return re.sub(r"\?(\d+)", lambda p: f"?{_renumber(int(p[1]), i)}", row)

        sql = _events_sql[key] = head + ", ".join(numbered(i) for i in range(n)) + tail
    return sql


def _renumber(n: int, event: int) -> int:
    return n + _PER_EVENT * event if n > 2 else n


def insert_events(conn: sqlite3.Connection, queries: Any, env: str, now: float,
                  values: list[Any]) -> int:
    """Insert events given as ev_insert_values's values, ``_PER_EVENT`` per event; how
    many were inserted. In statements of ``_ROWS`` events, then of the remainder's binary
    digits (64, 32, ...): a few statement texts, each prepared once per connection."""
    template = queries["ev_insert_values"]
    count = len(values) // _PER_EVENT
    inserted = 0
    at = 0
    while at < count:
        left = count - at
        n = _ROWS if left >= _ROWS else 1 << (left.bit_length() - 1)
        part = values[at * _PER_EVENT:(at + n) * _PER_EVENT]
        inserted += conn.execute(_insert_sql(template, n), [env, now, *part]).rowcount
        at += n
    return inserted


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
