"""Store part for debounce and batch (issue 20, part 5; the model is ``_groups_base.py``).

A run that carries a ``RunGroup`` joins its group's pending run instead of being inserted
as a run of its own, whoever inserts it: a trigger, a batch trigger, an event's fan-out,
a child trigger. In the inserting transaction, for each such run in (env, task, kind,
key) order (two transactions taking several groups cannot deadlock on them):

1. ``group_lock`` upserts the group's row. On PostgreSQL the upsert takes the row's lock,
   or waits for the transaction holding it and then reads what it committed, so two
   transactions racing for one key are ordered here and the second sees the first's run.
   SQLite's writers are serialized by its file lock.
2. A new group: the run is inserted DELAYED (debounce: until its period, or its timeout
   if shorter; batch: until its timeout) and the row points at it.
3. An existing group whose run is still pending (DELAYED, its start ahead of now): the
   run is changed in place (debounce: the new payload and a later start, capped at the
   burst's first trigger plus the timeout; batch: the event's data appended, and the
   run queued now if that filled it). The run's row lock orders this against the tick
   promoting it: whichever comes second sees the other's result.
4. An existing group whose run is not pending any more (promoted, started, finished,
   cancelled, pruned): a new burst, in a new run, and the row points at that.

The run's metadata counts what it took (``{"debounce": {"key", "count"}}``, or
``"batch"``): the run page shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._serde import dumps, loads
from ._groups_base import BATCH, LEADING, RunGroup
from ._match import payload_keys
from ._rows import Tx
from ._sql_core import SqlCore
from ._types import NewRun, TriggerResult


def _counted(metadata: str, group: RunGroup, count: int) -> str:
    """A run's metadata with its group's count; a batch's, without the one event's id."""
    meta = loads(metadata) if metadata else {}
    if not isinstance(meta, dict):
        meta = {}
    if group.kind == BATCH:
        meta.pop("event", None)
    meta[group.kind] = {"key": group.key, "count": count}
    return dumps(meta)


class GroupsMixin(SqlCore):
    """Debounced and batched runs joining their group (see the module docstring)."""

    def _insert_grouped(self, tx: Tx, runs: Sequence[NewRun], now: float
                        ) -> list[TriggerResult]:
        plain = [r for r in runs if r.group is None]
        found = dict(zip((r.id for r in plain), self._insert_runs(tx, plain, now),
                         strict=True)) if plain else {}
        grouped = [(r.env, r.task_id, r.group.kind, r.group.key, i, r)
                   for i, r in enumerate(runs) if r.group is not None]
        grouped.sort(key=lambda g: g[:5])  # a burst's triggers stay in their order
        for *_, r in grouped:
            found[r.id] = self._join_group(tx, r, now)
        return [found[r.id] for r in runs]

    def _join_group(self, tx: Tx, run: NewRun, now: float) -> TriggerResult:
        group = run.group
        assert group is not None
        if group.kind == BATCH and group.max_size <= 1:
            return self._start_group(tx, run, group, now)  # a batch of one: a run of its own
        ident = {"env": run.env, "task_id": run.task_id, "kind": group.kind, "key": group.key}
        row = tx.q("group_lock", **ident, run_id=run.id, now=now)[0]
        if row["run_id"] != run.id:
            pending = str(row["run_id"])
            size, first_at = int(row["size"]), float(row["first_at"])
            if group.kind == BATCH:
                joined = self._append(tx, run, group, pending, size, now)
            else:
                joined = self._push(tx, run, group, pending, size, first_at, now)
            if joined:
                return TriggerResult(pending, True)
            tx.x("group_restart", **ident, run_id=run.id, now=now)
        return self._start_group(tx, run, group, now)

    def _start_group(self, tx: Tx, run: NewRun, group: RunGroup, now: float
                     ) -> TriggerResult:
        """The first run of a burst or batch: inserted DELAYED until its start."""
        first = object.__new__(NewRun)  # a shallow copy, without its group
        first.__dict__.update(run.__dict__)
        first.group = None
        first.metadata = _counted(run.metadata, group, 1)
        if group.kind == BATCH:
            first.payload = f"[{run.payload}]"
            first.delay = group.period if group.max_size > 1 else None
        else:
            first.delay = min(group.period, group.timeout or group.period)
        self._insert_runs(tx, [first], now)
        return TriggerResult(run.id, False)

    def _push(self, tx: Tx, run: NewRun, group: RunGroup, pending: str, size: int,
              first_at: float, now: float) -> bool:
        """Debounce: the pending run takes this trigger (trailing: its payload too) and
        starts a period after it, or at the burst's timeout; False if it is not pending."""
        start = now + group.period
        if group.timeout is not None:
            start = min(start, first_at + group.timeout)
        if group.mode == LEADING:
            rows = tx.q("group_pending_metadata", id=pending, now=now)
            if not rows:
                return False
            payload, max_attempts, metadata = None, None, rows[0]["metadata"]
        else:
            payload, max_attempts, metadata = run.payload, run.max_attempts, run.metadata
        if not tx.q(
            "group_debounce_run", id=pending, payload=payload, max_attempts=max_attempts,
            metadata=_counted(metadata, group, size), now=now, start=start,
            ttl_expires_at=start + run.ttl if run.ttl else None,
        ):
            return False
        if payload is not None and run.cancel_paths:
            # cancel_on finds runs by the keys of their payload (run_cancel_keys): the
            # pending run's follow the payload it took.
            tx.x("prune_run_cancel_keys", ids=self._list([pending]))
            keys = [{"env": run.env, "task_id": run.task_id, "path": path, "value": value,
                     "run_id": pending}
                    for path, value in payload_keys(run.cancel_paths, loads(payload))]
            if keys:
                tx.many("insert_run_cancel_key", keys)
        return True

    def _append(self, tx: Tx, run: NewRun, group: RunGroup, pending: str, size: int,
                now: float) -> bool:
        """Batch: the event's data joins the pending run, which starts now if it is full;
        False if it is not pending."""
        full = size >= group.max_size
        rows = tx.q("group_append_full" if full else "group_append_run", id=pending,
                    item=run.payload, metadata=_counted(run.metadata, group, size), now=now)
        if rows and full:
            self._notify(tx, run.env)
        return bool(rows)
