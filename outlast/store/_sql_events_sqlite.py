"""SQLite's hook for the events part: a single publish without the batch machinery.

A trigger on SQLite is one autocommitted INSERT; a publish needs a transaction (the event
and its runs commit together). This path keeps that transaction to what it must hold:
BEGIN IMMEDIATE, the event (whose statement also returns the task fingerprint and whether
anyone waits on its name), the runs, COMMIT. The fan-out is planned before BEGIN with the
subscribers this process read last; the statement's fingerprint says whether that plan
still stands. Mixed into ``SQLiteStore`` ahead of ``SqlStore``."""

from __future__ import annotations

import contextlib

from .._serde import loads
from ._events_base import EventPlanner, EventRecord, NewEvent, PublishResult
from ._sql_events import EventsMixin, _Batch, fanout_json


class _Refused(Exception):
    """The planned publish does not stand (its id is taken, or the task definitions
    changed): rolled back, and the publish takes the general path."""


class SqliteEventsMixin(EventsMixin):
    def _publish_alone(self, env: str, event: NewEvent, planner: EventPlanner
                       ) -> PublishResult | None:
        # Anything needing more than the event and plain runs (cancels; tags, keys,
        # traces, cancel_on keys, debounce or batch groups, a queue row not yet ensured)
        # takes the general path, as does a duplicate id or a changed definition. Waits
        # on the name are served here: their rows are read only when some exist.
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
        for r in runs:
            if (r.tags or r.idempotency_key is not None or r.trace_context
                    or r.cancel_paths
                    or r.group is not None  # it may join a pending run (_sql_groups)
                    or (r.env, r.queue, r.concurrency_key) not in self._ensured):
                return None
        rows = [self._run_row(r, now) for r in runs]
        batch = _Batch(env, subscribers, now)
        result: PublishResult | None = None
        with contextlib.suppress(_Refused), self._transaction() as tx:
            found = tx.q("ev_insert_alone", env=env, id=event.id, name=event.name,
                         data=event.data, now=now, dedup_until=now + event.dedup_seconds,
                         expires_at=now + event.retention_seconds, fanout=fanout_json(plan))
            if not found or found[0]["v"] != version:
                raise _Refused  # rolls the event back
            tx.many("insert_run", rows)
            if any(not r.delay for r in runs):
                self._notify(tx, env)
                batch.woke = True
            if found[0]["waiting"]:
                object.__setattr__(record, "seq", int(found[0]["seq"]))
                self._resume_waits(tx, batch, record, planner)  # wakes what it resumed
            result = PublishResult(event.id, False, [r.id for r in runs])
        if result is None:
            return None
        self._published(batch)  # committed
        return result
