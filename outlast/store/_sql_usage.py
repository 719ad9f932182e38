"""Usage in SQL: finished runs folded into daily rollups, and the reads of usage reports,
spikes and advice.

Nothing here runs on the hot path. The runs' own counters (active, queued and waited
seconds) are kept by the statements that end a segment, claim or resume a run, in their
transactions (see queries.sql); so is the outbox: each statement that finishes runs adds
one ``usage_outbox`` row naming them. This part reads from the scheduler's tick: the fold
takes outbox rows in bounded batches, folds the runs they name and deletes the rows in
the transaction that writes the rollups, so a fold killed half way leaves nothing and a
run is folded once, whatever order the finishing commits landed in (a commit whose
``finished_at`` is older than others' is simply a later outbox row). Readers add the
runs still in the outbox themselves, so reports do not lag.

Before the contract migration ``0019_drop_runs_finished`` (``usage_state.outbox`` = 0,
while processes of the release before may still run) the fold is the earlier one, which
both releases then run alike: runs read from the ``runs_finished`` index behind a
``(finished_at, id)`` watermark, ``grace`` seconds after they finished; the outbox is
only trimmed, since the migration fills it afresh from the watermark.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .._serde import dumps, loads
from ._rows import Row, Tx
from ._sql_core import SqlCore
from ._usage_base import DAY, SpikeEvidence, UsageDay, bucket

_FAILED = ("FAILED", "TIMED_OUT")
_NOT_WAITS = ("step", "trigger", "create_token")
_DICTS = ("durations", "actives", "waits", "children")
# A sample of queue limits counts the time since the last one, but no more than this:
# a scheduler that stopped for an hour did not see the queue at its limit all along.
_MAX_SAMPLE_GAP = 60.0
_OUTBOX_PAGE = 100  # outbox rows read at a time (each names the runs of one statement)


def day_of(ts: float) -> int:
    return int(ts // DAY * DAY)


class UsageMixin(SqlCore):
    """Mixed into SqlStore."""

    def aggregate_usage(self, *, limit: int = 5000, grace: float = 60.0) -> int:
        now = self.now()
        with self._transaction() as tx:
            tx.x("usage_state_ensure")
            state = tx.q("usage_state_lock")[0]
            after = (float(state["finished_at"]), str(state["run_id"]))
            if int(state["outbox"] or 0):
                folded, _ = self._fold_outbox(tx, 0, limit, delete=True)
                days, last = folded, after
                n = sum(d.runs for d in days.values())
            else:  # the index fold, until the contract migration hands over
                rows = self._finished_after(tx, after, now - grace, limit)
                days = self._fold(tx, rows, *self._span_details(tx, rows, after))
                last = (float(rows[-1]["finished_at"]), str(rows[-1]["id"])) if rows else after
                n = len(rows)
                tx.x("usage_outbox_trim")
            for key, day in days.items():
                self._add_to_rollup(tx, key, day)
            self._sample(tx, now, float(state["sampled_at"]))
            tx.x("usage_state_set", finished_at=last[0], run_id=last[1], sampled_at=now)
        return n

    def _finished_after(
        self, tx: Tx, after: tuple[float, str], upto: float, limit: int
    ) -> list[Row]:
        return tx.q(
            "usage_finished_runs",
            upto=upto,
            after_at=after[0],
            after_id=after[1],
            limit=limit,
        )

    def _fold_outbox(
        self, tx: Tx, after: int, limit: int, *, delete: bool
    ) -> tuple[dict[tuple[str, str, int], UsageDay], int]:
        """Fold the runs named by outbox rows after ``after``, up to about ``limit`` runs
        (whole rows); deleted if ``delete``. Returns the folded days and the last row's seq
        (``after`` if there was none)."""
        seqs: list[int] = []
        ids: list[str] = []
        while len(ids) < limit:
            page = tx.q("usage_outbox_page", after=after, limit=_OUTBOX_PAGE)
            for row in page:
                seqs.append(int(row["seq"]))
                ids.extend(_run_ids(row["run_ids"]))
                if len(ids) >= limit:
                    break
            if not page or len(page) < _OUTBOX_PAGE:
                break
            after = seqs[-1]
        if not seqs:
            return {}, after
        unique = sorted(set(ids))  # a run finishes once; a repeated id is counted once
        listed = self._list(unique)
        rows = tx.q("usage_runs_by_id", ids=listed)
        journal = tx.q("usage_journal_by_id", ids=listed)
        children = tx.q("usage_children_by_id", ids=listed)
        days = self._fold(tx, rows, journal, children)
        if delete:
            tx.x("usage_outbox_delete", seqs=self._list(seqs))
        return days, seqs[-1]

    def _span_details(
        self, tx: Tx, rows: list[Row], after: tuple[float, str]
    ) -> tuple[list[Row], list[Row]]:
        """The journal summaries and children of the index fold's ``rows``."""
        if not rows:
            return [], []
        span = {
            "after_at": after[0],
            "after_id": after[1],
            "last_at": float(rows[-1]["finished_at"]),
            "last_id": str(rows[-1]["id"]),
        }
        return tx.q("usage_finished_journal", **span), tx.q("usage_finished_children", **span)

    def _fold(
        self, tx: Tx, rows: list[Row], journal_rows: list[Row], children_rows: list[Row]
    ) -> dict[tuple[str, str, int], UsageDay]:
        """Per (env, task, day) totals of finished ``rows``, with their journal summaries
        and children."""
        days: dict[tuple[str, str, int], UsageDay] = {}
        journal: dict[str, list[Row]] = {}
        for j in journal_rows:
            journal.setdefault(str(j["run_id"]), []).append(j)
        children: dict[str, list[Row]] = {}
        for c in children_rows:
            children.setdefault(str(c["run_id"]), []).append(c)
        for r in rows:
            key = (str(r["env"]), str(r["task_id"]), day_of(float(r["created_at"])))
            d = days.get(key)
            if d is None:
                d = days[key] = UsageDay(env=key[0], task_id=key[1], day=key[2])
            _fold_run(d, r, journal.get(str(r["id"]), ()), children.get(str(r["id"]), ()))
        return days

    def _add_to_rollup(self, tx: Tx, key: tuple[str, str, int], day: UsageDay) -> None:
        found = tx.q("usage_daily_get", env=key[0], task_id=key[1], day=key[2])
        if found:
            total = _day_from_row(found[0])
            total.add(day)
        else:
            total = day
        tx.x("usage_daily_put", **_day_row(total))

    def _sample(self, tx: Tx, now: float, last: float) -> None:
        """Concurrency per task now (the day's peak), and the queues at their limit
        with ready runs since the last sample."""
        today = day_of(now)
        for r in tx.q("usage_executing"):
            key = (str(r["env"]), str(r["task_id"]), today)
            peak = UsageDay(env=key[0], task_id=key[1], day=today, peak_concurrency=int(r["n"]))
            self._add_to_rollup(tx, key, peak)
        if last <= 0:
            return
        gap = min(max(0.0, now - last), _MAX_SAMPLE_GAP)
        if gap <= 0:
            return
        for q in tx.q("usage_limited_queues", now=now):
            if _at_limit(q, now):
                tx.x("usage_queue_add", env=q["env"], queue=q["name"], day=today, seconds=gap)

    # -- reading --------------------------------------------------------------------------
    def usage_days(self, env: str, since: float, task_id: str | None = None) -> list[UsageDay]:
        since_day = day_of(since)
        with self._transaction() as tx:
            states = tx.q("usage_state_read")
            state: Row = states[0] if states else {"finished_at": 0.0, "run_id": "", "outbox": 1}
            out: dict[tuple[str, str, int], UsageDay] = {}
            for r in tx.q("usage_daily_range", env=env, since_day=since_day, task_id=task_id):
                d = _day_from_row(r)
                out[(d.env, d.task_id, d.day)] = d
            # Runs finished and not folded yet, folded here as the scheduler will fold
            # them: read in batches, the same order and queries.
            after = (float(state["finished_at"]), str(state["run_id"]))
            seq = 0
            while True:
                if int(state["outbox"] or 0):
                    days, last = self._fold_outbox(tx, seq, 5000, delete=False)
                    if last == seq:
                        break
                    seq = last
                else:
                    rows = self._finished_after(tx, after, 1e300, 5000)
                    if not rows:
                        break
                    days = self._fold(tx, rows, *self._span_details(tx, rows, after))
                    after = (float(rows[-1]["finished_at"]), str(rows[-1]["id"]))
                for key, d in days.items():
                    if d.env != env or d.day < since_day or (task_id and d.task_id != task_id):
                        continue
                    if key in out:
                        out[key].add(d)
                    else:
                        out[key] = d
        return sorted(out.values(), key=lambda d: (d.day, d.task_id))

    def queue_saturation(self, env: str, since: float) -> dict[str, float]:
        with self._transaction() as tx:
            rows = tx.q("usage_queue_range", env=env, since_day=day_of(since))
        return {str(r["queue"]): float(r["seconds"] or 0.0) for r in rows}

    def spike_evidence(self, env: str, task_id: str, since: float, until: float) -> SpikeEvidence:
        span = {"env": env, "task_id": task_id, "since": since, "until": until}
        before = {**span, "since": since - (until - since), "until": since}
        with self._transaction() as tx:
            rep = tx.q("usage_payload_repeats", **span)[0]
            keys = tx.q("usage_key_shares", **span)
            errors: dict[str, int] = {}
            for e in tx.q("usage_failed_attempts", **span):
                kind = _error_type(e["data"])
                errors[kind] = errors.get(kind, 0) + 1
            fires = int(tx.q("usage_schedule_fires", **span)[0]["n"])
            fires_before = int(tx.q("usage_schedule_fires", **before)[0]["n"])
        no_key = int(rep["no_key"] or 0)
        return SpikeEvidence(
            runs=int(rep["runs"] or 0),
            no_key_runs=no_key,
            repeated_payloads=no_key - int(rep["distinct_no_key"] or 0),
            key_shares=[(str(k["ckey"]), int(k["n"])) for k in keys],
            error_types=sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])),
            schedule_fires=fires,
            schedule_fires_before=fires_before,
        )

    def scheduled_tasks(self, env: str) -> set[str]:
        with self._transaction() as tx:
            return {str(r["task_id"]) for r in tx.q("usage_scheduled_tasks", env=env)}


def _fold_run(d: UsageDay, r: Row, journal: Iterable[Row], children: Iterable[Row]) -> None:
    status = str(r["status"])
    # A run that never started (expired, cancelled while queued) made no attempt.
    attempts = int(r["attempt"]) if r["started_at"] is not None else 0
    active = float(r["active_seconds"] or 0.0)
    d.runs += 1
    d.completed += status == "COMPLETED"
    d.failed += status in _FAILED
    d.attempts += attempts
    d.retried += attempts > 1
    d.recovered += attempts > 1 and status == "COMPLETED"
    d.active_seconds += active
    d.queued_seconds += float(r["queued_seconds"] or 0.0)
    d.waited_seconds += float(r["waited_seconds"] or 0.0)
    d.max_active = max(d.max_active, active)
    b = str(bucket(active))
    d.actives[b] = d.actives.get(b, 0) + 1
    if r["started_at"] is not None:
        duration = max(0.0, float(r["finished_at"]) - float(r["started_at"]))
        d.max_duration = max(d.max_duration, duration)
        b = str(bucket(duration))
        d.durations[b] = d.durations.get(b, 0) + 1
    for j in journal:
        kind, n = str(j["kind"]), int(j["n"])
        if kind == "step":
            d.steps_executed += n
            d.steps_replayed += int(j["replayed"] or 0)
        elif kind not in _NOT_WAITS:
            d.waits[kind] = d.waits.get(kind, 0) + n
    for c in children:
        n = int(c["n"])
        d.child_runs += n
        d.children[str(c["task_id"])] = d.children.get(str(c["task_id"]), 0) + n


def _run_ids(value: Any) -> list[str]:
    """An outbox row's run ids: a PostgreSQL array, or SQLite's JSON list."""
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value or ()]


def _day_row(d: UsageDay) -> dict[str, Any]:
    row: dict[str, Any] = {k: v for k, v in vars(d).items() if k not in _DICTS}
    for k in _DICTS:
        row[k] = dumps(getattr(d, k))
    return row


def _day_from_row(r: Row) -> UsageDay:
    values: dict[str, Any] = {}
    for k in UsageDay.__dataclass_fields__:
        v = r[k]
        values[k] = {str(a): int(b) for a, b in (loads(v) or {}).items()} if k in _DICTS else v
    for k in ("active_seconds", "queued_seconds", "waited_seconds", "max_active", "max_duration"):
        values[k] = float(values[k])
    for k in ("day", "runs", "completed", "failed", "attempts", "retried", "recovered",
              "peak_concurrency", "child_runs", "steps_executed", "steps_replayed"):
        values[k] = int(values[k])
    return UsageDay(**values)


def _at_limit(q: Row, now: float) -> bool:
    """A queue with ready runs is at its limit when a key (or the whole queue) holds
    all its slots, or its rate window is full."""
    limit, top = q["concurrency_limit"], q["top_key"]
    if limit is not None and top is not None and int(top) >= int(limit):
        return True
    if q["global_limit"] is not None and int(q["executing"]) >= int(q["global_limit"]):
        return True
    count, period = q["rate_limit_count"], q["rate_limit_period"]
    if count is not None and period:
        window = [float(t) for t in (loads(q["rate_window"]) or [])]
        return sum(1 for t in window if t > now - float(period)) >= int(count)
    return False


def _error_type(data: Any) -> str:
    try:
        err = json.loads(data) if isinstance(data, str) else (data or {})
    except ValueError:
        return "unknown"
    if not isinstance(err, dict):
        return "unknown"
    return str(err.get("type") or err.get("code") or "unknown")
