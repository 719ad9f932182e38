"""Store part for events: the log, atomic fan-out, cancel-on and event waits (see
``_events_base.py`` for the model; ``outlast/_events.py`` is the planner)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import EventNotFound
from .._serde import dumps, loads
from ._events_base import (
    Delivery,
    EventPlanner,
    EventRecord,
    EventWait,
    Fanout,
    NewEvent,
    PublishResult,
)
from ._match import match_key
from ._rows import Row, Tx, _task_def, _waitpoint
from ._sql_core import SqlCore
from ._types import NewRun, TaskDef, TriggerResult, Waitpoint


def _event(row: Row, deliveries: list[Delivery] | None = None) -> EventRecord:
    return EventRecord(
        seq=int(row["seq"]),
        id=row["id"],
        env=row["env"],
        name=row["name"],
        data=loads(row["data"]),
        created_at=row["created_at"],
        deliveries=deliveries or [],
    )


def _fanout(row: Row) -> list[Delivery]:
    """What an event's publish did to each subscriber (``events.fanout``; NULL for events
    logged before it existed, whose deliveries are all rows)."""
    text = row.get("fanout")
    if not text:
        return []
    return [Delivery(task_id=t, outcome=o, run_id=r, reason=why, replay=False,
                     created_at=row["created_at"]) for t, r, o, why in loads(text)]


def _delivery_order(d: Delivery) -> tuple[float, str]:
    return (d.created_at, d.task_id)


def _delivery(row: Row) -> Delivery:
    return Delivery(
        task_id=row["task_id"],
        outcome=row["outcome"],
        run_id=row["run_id"],
        reason=row["reason"],
        replay=bool(row["replay"]),
        created_at=row["created_at"],
    )


def _task_of(run: NewRun) -> str:
    return run.task_id


_Plan = tuple[EventRecord, list[Fanout]]


@dataclass
class _AlonePlan:
    """A single publish planned before its statement (``_plan_alone``)."""

    version: str  # the subscribers' fingerprint the plan was made with
    subscribers: list[TaskDef]
    now: float
    record: EventRecord
    plan: list[Fanout]
    runs: list[NewRun]


def _plan(batch: _Batch, events: Sequence[NewEvent], planner: EventPlanner
          ) -> dict[str, _Plan]:
    """Each distinct event's fan-out, planned before the events are inserted: what it did
    to every subscriber is written with the event (``events.fanout``), in the same row.
    A duplicate's plan is dropped (its run ids are never used)."""
    plans: dict[str, _Plan] = {}
    for e in events:
        if e.id not in plans:
            plans[e.id] = plan_event(batch, e, planner)
    return plans


def plan_event(batch: _Batch, e: NewEvent, planner: EventPlanner) -> _Plan:
    """One event's record (its seq not known yet) and fan-out."""
    # Its fields set as EventRecord's __init__ would, without the frozen dataclass's
    # object.__setattr__ per field: a third of the cost, once per event of a batch.
    record = object.__new__(EventRecord)
    record.__dict__.update(seq=0, id=e.id, env=batch.env, name=e.name, data=loads(e.data),
                           created_at=batch.now, deliveries=[], data_json=e.data)
    return record, planner.fan_out(record, batch.subscribers, replay=False)


def fanout_json(plan: Sequence[Fanout]) -> str:
    """An event's fan-out as the log keeps it: [task_id, run_id, outcome, reason] each."""
    return dumps([[f.task_id, f.run.id if f.run else None, f.outcome, f.reason]
                  for f in plan])


def _event_rows(batch: _Batch, events: Sequence[NewEvent], plans: dict[str, _Plan]
                ) -> list[list[Any]]:
    """[id, name, data, fanout, dedup_until, expires_at] per event, as ev_insert_rows takes
    them (with the batch's env and time once, not per row)."""
    now = batch.now
    return [[e.id, e.name, e.data, fanout_json(plans[e.id][1]), now + e.dedup_seconds,
             now + e.retention_seconds]
            for e in events]


def _one_row(batch: _Batch, row: list[Any]) -> dict[str, Any]:
    """One of ``_event_rows`` as ev_insert_one's parameters."""
    return {"env": batch.env, "id": row[0], "name": row[1], "data": row[2], "now": batch.now,
            "dedup_until": row[4], "expires_at": row[5], "fanout": row[3]}


@dataclass
class _Batch:
    """What one publish transaction has planned and not yet written, and what it knows."""

    env: str
    subscribers: list[TaskDef]
    now: float
    runs: list[NewRun] = field(default_factory=list)
    created: dict[str, list[str]] = field(default_factory=dict)  # event id -> its runs
    waits: dict[str, list[EventWait]] = field(default_factory=dict)  # by event name
    ensured: set[tuple[str, str, str]] = field(default_factory=set)  # (env, queue, key)
    # Debounced or batched runs planned: run id -> its event's seq (``_joined``)
    grouped: dict[str, int] = field(default_factory=dict)
    # Events whose runs are inserted already, as they were planned, and which cancel
    # nothing (_sql_events_pg)
    written: set[str] = field(default_factory=set)
    woke: bool = False


def _joined(tx: Tx, batch: _Batch, results: list[TriggerResult]) -> None:
    """Planned runs that joined a debounce or batch group's pending run instead
    (``_sql_groups``): their event's fan-out and the publish results name that run. The
    fan-out was written with the event, before its runs: run ids are unique, so the
    planned id is replaced in the event's row where it stands."""
    moved = {r.id: t.id for r, t in zip(batch.runs, results, strict=True) if r.id != t.id}
    for planned, run_id in moved.items():
        seq = batch.grouped.get(planned)
        if seq is not None:
            tx.x("ev_fanout_moved", seq=seq, planned=planned, run_id=run_id)
    batch.grouped.clear()
    if moved:
        for ids in batch.created.values():  # the lists the PublishResults hold
            ids[:] = [moved.get(i, i) for i in ids]


class EventsMixin(SqlCore):
    """The events part of the SQL store (see ``_events_base.py``)."""

    @abc.abstractmethod
    def _cancel_tree(self, tx: Tx, run_id: str, now: float, ended: list[str]) -> None:
        """Cancel a run and its waiting children (``SqlStore``'s, shared with cancel)."""

    # -- publishing -----------------------------------------------------------------------
    def publish_events(
        self, env: str, events: Sequence[NewEvent], planner: EventPlanner
    ) -> list[PublishResult]:
        if len(events) == 1:
            done = self._publish_alone(env, events[0], planner)
            if done is not None:
                return [done]
        now = self.now()
        with self._transaction() as tx:
            results, batch = self._publish_in(tx, env, events, planner, now)
        self._published(batch)
        return results

    def _publish_in(self, tx: Tx, env: str, events: Sequence[NewEvent],
                    planner: EventPlanner, now: float) -> tuple[list[PublishResult], _Batch]:
        """Publish inside ``tx``: the whole of a publish but its commit, so another record
        can commit with the events (an incoming webhook's delivery, ``_sql_webhooks``).
        The caller calls ``_published`` with the batch once the transaction committed."""
        names = sorted({e.name for e in events})
        batch = _Batch(env, self._lock_and_subscribers(tx, env, names, now), now)
        self._before_planning(tx, len(events), len(batch.subscribers))
        plans, seqs = self._plan_and_insert(tx, batch, events, planner)
        results = [self._publish_one(tx, batch, e, seqs.pop(e.id, None), plans, planner)
                   for e in events]
        self._flush(tx, batch)
        # No NOTIFY of its own: inserting runs and completing waits announce them.
        return results, batch

    def _published(self, batch: _Batch) -> None:
        # Committed: the queue and slot rows of these runs exist from now on (see trigger).
        self._ensured.update(batch.ensured)
        if batch.woke:
            self.wake_local()

    def _publish_alone(self, env: str, event: NewEvent, planner: EventPlanner
                       ) -> PublishResult | None:
        """A single publish in one statement, committed on its own; None when it takes the
        transaction (``_publish_in``, the body of every other publish). A backend hook
        (``_sql_events_pg``): SQLite has no round trips to save. Whatever a planner
        decides beyond runs and deliveries (cancels, waits, ...) must make it refuse."""
        return None

    def _plan_alone(self, env: str, event: NewEvent, planner: EventPlanner
                    ) -> _AlonePlan | None:
        """A single publish's fan-out planned with the subscribers this process read last
        (the backend's statement checks their fingerprint); None when none were read yet
        or the event cancels runs (those take the transaction)."""
        cached = self._subscriber_cache().get(env)
        if cached is None:
            return None
        version, subscribers = cached
        now = self.now()
        record = EventRecord(seq=0, id=event.id, env=env, name=event.name,
                             data=loads(event.data), created_at=now, data_json=event.data)
        if planner.cancel_matches(record, subscribers):
            return None
        plan = planner.fan_out(record, subscribers, replay=False)
        runs = [f.run for f in plan if f.run is not None]
        return _AlonePlan(version, subscribers, now, record, plan, runs)

    def _before_planning(self, tx: Tx, events: int, subscribers: int) -> None:
        """A backend hook, before a publish plans ``events`` against ``subscribers`` in
        Python inside its transaction (``_sql_events_pg``: the idle bound)."""

    def _lock_and_subscribers(self, tx: Tx, env: str, names: list[str], now: float
                              ) -> list[TaskDef]:
        """Lock the event names, then read the subscribers. Locks first, in name order: a
        concurrent publish of the same names cannot deadlock with this one, and a wait
        registering on a name is ordered with it. SQLite takes none: its write
        transactions (BEGIN IMMEDIATE) already take turns. A backend hook
        (``_sql_events_pg``)."""
        if self.dialect != "sqlite":
            for name in names:
                tx.x("ev_lock_name", env=env, name=name, now=now)
        return self._subscribers(tx, env, tx.q("ev_tasks_version", env=env)[0]["v"])

    def _subscribers(self, tx: Tx, env: str, version: str) -> list[TaskDef]:
        """The environment's task definitions, read again only when their fingerprint
        (``ev_tasks_version``, read in this transaction) changed since the last read."""
        cache = self._subscriber_cache()
        cached = cache.get(env)
        if cached is not None and cached[0] == version:
            return cached[1]
        found = [_task_def(r) for r in tx.q("ev_subscribers", env=env)]
        if len(cache) > 64:
            cache.clear()
        cache[env] = (version, found)
        return found

    def _subscriber_cache(self) -> dict[str, tuple[str, list[TaskDef]]]:
        cache: dict[str, tuple[str, list[TaskDef]]] | None = self.__dict__.get("_ev_subs")
        if cache is None:
            cache = self.__dict__["_ev_subs"] = {}
        return cache

    def _plan_and_insert(self, tx: Tx, batch: _Batch, events: Sequence[NewEvent],
                         planner: EventPlanner) -> tuple[dict[str, _Plan], dict[str, int]]:
        """Plan each distinct event's fan-out, then insert the events (``_insert_events``).
        A backend hook: PostgreSQL plans while its COPY of the events streams."""
        plans = _plan(batch, events, planner)
        return plans, self._insert_events(tx, batch, events, plans)

    def _insert_events(self, tx: Tx, batch: _Batch, events: Sequence[NewEvent],
                       plans: dict[str, _Plan]) -> dict[str, int]:
        """Insert the events whose id is not deduplicating (the first of a batch's repeats),
        each with its fan-out; their sequence numbers by id. A few statements per batch,
        not per event."""
        env, now = batch.env, batch.now
        rows = _event_rows(batch, events, plans)
        if len(rows) == 1:
            # The common single publish: one statement, unless its id is taken (a retry,
            # or an id past its window: released here, then inserted).
            one = _one_row(batch, rows[0])
            seq = self._insert_one(tx, batch, one, events[0].name)
            if seq is None:
                tx.x("ev_release_keys", env=env, ids=self._list([one["id"]]), now=now)
                found = tx.q("ev_insert_one", **one)
                seq = int(found[0]["seq"]) if found else None
            return {str(one["id"]): seq} if seq is not None else {}
        fresh: dict[str, list[Any]] = {}  # the first of a batch's repeats
        for row in rows:
            fresh.setdefault(row[0], row)
        seqs = self._insert_event_rows(tx, batch, list(fresh.values()))
        taken = [i for i in fresh if i not in seqs]
        if taken:  # a retry, or an id past its window (released here, then reused)
            tx.x("ev_release_keys", env=env, ids=self._list(taken), now=now)
            seqs.update(self._insert_event_rows(tx, batch, [fresh[i] for i in taken]))
        return seqs

    def _insert_one(self, tx: Tx, batch: _Batch, row: dict[str, Any], name: str
                    ) -> int | None:
        """Insert one event; its sequence number, None if its id is taken. A backend hook:
        PostgreSQL reads the waits for its name in the same statement. (SQLite's write
        transactions take turns, so a name no run waits for stays so until it commits.)"""
        found = tx.q("ev_insert_one", **row)
        if not found:
            return None
        if not found[0]["waiting"]:
            batch.waits[name] = []
        return int(found[0]["seq"])

    def _insert_event_rows(self, tx: Tx, batch: _Batch, rows: list[list[Any]]
                           ) -> dict[str, int]:
        """Insert events (distinct ids, ``_event_rows``) in one statement; the sequence
        numbers of those inserted, by id (an id still deduplicating inserts nothing)."""
        found = tx.q("ev_insert_rows", env=batch.env, now=batch.now, rows=dumps(rows))
        return {r["id"]: int(r["seq"]) for r in found}

    def _publish_one(
        self, tx: Tx, batch: _Batch, e: NewEvent, seq: int | None, plans: dict[str, _Plan],
        planner: EventPlanner,
    ) -> PublishResult:
        env, now = batch.env, batch.now
        if seq is None:  # a duplicate: a retry, or a repeat within the batch (its plan unused)
            first = batch.created.get(e.id)
            if first is None:
                first = self._first_runs(tx, env, e.id)
            return PublishResult(e.id, True, first)
        record, plan = plans.pop(e.id)
        object.__setattr__(record, "seq", seq)  # known now; planned with 0 (frozen: no copy)
        run_ids = []
        written = e.id in batch.written  # its runs inserted, and it cancels nothing
        runs = [] if written else batch.runs
        for f in plan:
            if f.run is not None:
                runs.append(f.run)
                run_ids.append(f.run.id)
                if f.run.group is not None:  # it may join a pending run (_joined)
                    batch.grouped[f.run.id] = seq
        batch.created[e.id] = run_ids
        cancels = None if written else planner.cancel_matches(record, batch.subscribers)
        if cancels:
            self._flush(tx, batch)  # runs this batch created may be among those cancelled
            ended: list[str] = []
            for task_id, path, value in cancels:
                # By the keys each run's cancel_on paths had at its trigger (an index
                # lookup); an if_-only cancel_on takes every unfinished run of the task.
                found = (tx.q("ev_cancel_keyed", env=env, task_id=task_id, path=path,
                              value=match_key(value)) if path else
                         tx.q("ev_unfinished_runs", env=env, task_id=task_id))
                for r in found:
                    self._cancel_tree(tx, r["id"], now, ended)
        self._resume_waits(tx, batch, record, planner)
        result = object.__new__(PublishResult)  # as plan_event's record, once per event
        result.__dict__.update(id=e.id, duplicate=False, run_ids=run_ids)
        return result

    def _resume_waits(self, tx: Tx, batch: _Batch, record: EventRecord,
                      planner: EventPlanner) -> None:
        waits = batch.waits.get(record.name)
        if waits is None:
            waits = batch.waits[record.name] = [
                EventWait(w["waitpoint_id"], w["name"], w["match_path"], w["match_value"],
                          w["expr"])
                for w in tx.q("ev_waits", env=batch.env, name=record.name)
            ]
        for wait in list(waits):
            if planner.wait_matches(record, wait):
                waits.remove(wait)  # completes once, with the first matching event
                if self._complete(tx, wait.waitpoint_id, "completed",
                                  dumps(record.envelope()), False, batch.now):
                    batch.woke = True

    def _flush(self, tx: Tx, batch: _Batch) -> None:
        """Write the runs the batch has planned so far."""
        if batch.runs:
            # By task: PostgreSQL's COPY encodes a run like the one before it but for its
            # id and payload (postgres._CopyLayout), and a fan-out alternates tasks.
            batch.runs.sort(key=_task_of)
            results = self._insert_runs(tx, batch.runs, batch.now)
            if batch.grouped:
                _joined(tx, batch, results)
            batch.ensured.update((r.env, r.queue, r.concurrency_key) for r in batch.runs)
            batch.runs = []
            batch.woke = True

    def _fan_out(
        self, tx: Tx, record: EventRecord, plan: list[Fanout], now: float, *, replay: bool
    ) -> list[str]:
        """Insert the planned deliveries and their runs; the ids of the runs created."""
        runs: list[NewRun] = []
        for f in plan:
            run_id = f.run.id if f.run is not None else None
            params: dict[str, Any] = {
                "seq": record.seq, "task_id": f.task_id, "run_id": run_id,
                "outcome": f.outcome, "reason": f.reason, "now": now,
            }
            if replay:
                tx.x("ev_insert_replay", **params)
            elif not tx.q("ev_insert_delivery", **params):
                continue  # this (event, task) was delivered already: no second run
            if f.run is not None:
                runs.append(f.run)
        if not runs:
            return []
        results = self._insert_runs(tx, runs, now)
        for planned, result in zip(runs, results, strict=True):
            if result.id != planned.id:  # it joined a debounce or batch group's pending run
                tx.x("ev_delivery_moved", seq=record.seq, planned=planned.id, run_id=result.id)
        return [r.id for r in results]

    # -- waits ----------------------------------------------------------------------------
    def register_event_wait(
        self,
        env: str,
        wait: EventWait,
        *,
        run_id: str,
        timeout_at: float | None,
        since: float | None,
        planner: EventPlanner,
    ) -> Waitpoint:
        now = self.now()
        with self._transaction() as tx:
            tx.x("ev_lock_name", env=env, name=wait.name, now=now)
            tx.x(
                "insert_waitpoint", id=wait.waitpoint_id, env=env, kind="event", run_id=run_id,
                timeout_at=timeout_at, idempotency_key=None, idempotency_expires_at=None,
                tags=dumps([f"event:{wait.name}"]), pending_children=0, now=now,
            )
            tx.x(
                "ev_insert_wait", waitpoint_id=wait.waitpoint_id, env=env, name=wait.name,
                match_path=wait.match_path, match_value=wait.match_value, expr=wait.expr,
                now=now,
            )
            wp = _waitpoint(tx.q("get_waitpoint", env=env, id=wait.waitpoint_id)[0])
            if since is not None and wp.status == "pending":
                # The lookback: an event published before the wait registered but within
                # ``since`` counts, the newest matching one.
                found = [
                    _event(r) for r in tx.q("ev_since", env=env, name=wait.name, since=since)
                ]
                for record in reversed(found):
                    if planner.wait_matches(record, wait):
                        self._complete(tx, wait.waitpoint_id, "completed",
                                       dumps(record.envelope()), False, now)
                        wp = _waitpoint(tx.q("get_waitpoint", env=env, id=wait.waitpoint_id)[0])
                        break
        return wp

    # -- replays --------------------------------------------------------------------------
    def replay_event(
        self, env: str, event_id: str, task_id: str | None, planner: EventPlanner
    ) -> list[Delivery]:
        now = self.now()
        with self._transaction() as tx:
            rows = tx.q("ev_get", env=env, id=event_id)
            if not rows:
                raise EventNotFound(f"no event {event_id!r} in environment {env!r}",
                                    field="event_id")
            record = _event(rows[0])
            subscribers = [
                _task_def(r) for r in tx.q("ev_subscribers", env=env)
                if task_id is None or r["id"] == task_id
            ]
            plan = planner.fan_out(record, subscribers, replay=True)
            created = iter(self._fan_out(tx, record, plan, now, replay=True))
            if any(f.run is not None for f in plan):
                self._notify(tx, env)
        self.wake_local()
        # A run that joined a debounce or batch group's is named by the one it joined.
        return [Delivery(f.task_id, f.outcome, next(created) if f.run else None, f.reason,
                         True, now) for f in plan]

    def deliver_retained(self, env: str, task_id: str, planner: EventPlanner) -> int:
        created = 0
        after = 0
        while True:
            now = self.now()
            with self._transaction() as tx:
                rows = tx.q("get_task", env=env, id=task_id)
                if not rows:
                    return created
                subscriber = _task_def(rows[0])
                page = [_event(r) for r in tx.q("ev_retained", env=env, now=now,
                                                after=after, task_id=task_id)]
                for record in page:
                    plan = planner.fan_out(record, [subscriber], replay=False)
                    created += len(self._fan_out(tx, record, plan, now, replay=False))
                    after = record.seq
                if created:
                    self._notify(tx, env)
            if created:
                self.wake_local()
            if len(page) < 500:
                return created

    # -- reading and pruning --------------------------------------------------------------
    def list_events(
        self, env: str, *, name: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        with self._transaction() as tx:
            rows = tx.q("ev_list", env=env, name=name, limit=limit)
            return self._with_deliveries(tx, rows)

    def get_event(self, env: str, event_id: str) -> EventRecord | None:
        with self._transaction() as tx:
            found = self._with_deliveries(tx, tx.q("ev_get", env=env, id=event_id))
        return found[0] if found else None

    def _with_deliveries(self, tx: Tx, rows: list[Row]) -> list[EventRecord]:
        if not rows:
            return []
        by_seq: dict[int, list[Delivery]] = {int(r["seq"]): _fanout(r) for r in rows}
        for d in tx.q("ev_deliveries", seqs=self._list(list(by_seq))):
            by_seq[int(d["event_seq"])].append(_delivery(d))
        for found in by_seq.values():
            found.sort(key=_delivery_order)
        return [_event(r, by_seq[int(r["seq"])]) for r in rows]

    def _first_runs(self, tx: Tx, env: str, event_id: str) -> list[str]:
        """The runs the first publish of a still-deduplicating id created (with those a
        retained delivery added), by task: a retry's answer."""
        pairs: list[tuple[str, str]] = []
        for r in tx.q("ev_first", env=env, id=event_id):
            pairs += [(d.task_id, d.run_id) for d in _fanout(r) if d.run_id]
            pairs += [(d["task_id"], d["run_id"])
                      for d in tx.q("ev_first_runs", seq=r["seq"])]
        return [run_id for _, run_id in sorted(pairs)]

    def prune_events(self) -> int:
        now = self.now()
        with self._transaction() as tx:
            tx.x("ev_prune_deliveries", now=now)
            pruned = int(tx.x("ev_prune", now=now))
            if self.dialect == "sqlite":  # its newest row stays as a tombstone (queries.sql)
                pruned += int(tx.x("ev_prune_newest", now=now))
                tx.x("ev_prune_tombstones")
            tx.x("ev_prune_waits")
            tx.x("group_prune")  # debounce and batch groups no longer pending
        return pruned

