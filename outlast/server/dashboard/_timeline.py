"""A run's timeline: Gantt rows for the queue wait, attempts, steps, waits and child runs,
and log lines as ticks, all placed on one time axis from the run's creation to its end
(or to now, so that a running run's bars grow as the page refreshes).

The store keeps no "attempt started" event, so an attempt's start is the earliest thing
known to belong to it: its first journal entry or log line, or the claim of its last
segment; an attempt ends at its ``attempt_failed`` event, or with the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...runs import JournalEntry, Run, RunEvent, RunStatus
from ...store.base import RunReads
from ._fmt import duration, when

MAX_CHILDREN = 100
MAX_TICKS = 500
MAX_WAIT_LOOKUPS = 50
WAIT_KINDS = {"sleep", "token", "children", "child"}


@dataclass
class Bar:
    start: float
    end: float | None  # None: still open, drawn up to now
    cls: str
    title: str
    href: str | None = None
    left: float = 0.0
    width: float = 0.0


@dataclass
class Row:
    label: str
    kind: str
    bars: list[Bar]
    note: str = ""
    href: str | None = None
    indent: int = 0


@dataclass
class Tick:
    ts: float
    cls: str
    title: str
    left: float = 0.0


@dataclass
class Timeline:
    t0: float
    t1: float
    rows: list[Row] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    axis: list[tuple[float, str]] = field(default_factory=list)
    live: bool = False


def all_events(store: RunReads, run_id: str, cap: int = 5000) -> list[RunEvent]:
    """The run's events in order (the store pages them by 1,000)."""
    out: list[RunEvent] = []
    after = 0
    while len(out) < cap:
        page = store.events(run_id, after)
        if not page:
            break
        out.extend(page)
        after = page[-1].id
        if len(page) < 1000:
            break
    return out


def attempts(run: Run, journal: list[JournalEntry], events: list[RunEvent],
             now: float | None = None) -> list[dict[str, Any]]:
    """One dict per attempt: number, start, end, outcome, error (message, traceback), and
    ``active_seconds``, the time it executed (without parked waits or queued time): a
    failed attempt's from its ending event, the last one's the rest of the run's (with
    its open segment up to ``now`` while it executes)."""
    failed = {e.attempt: e for e in events if e.kind == "attempt_failed" and e.attempt}
    ended_active = sum(e.active_seconds or 0.0 for e in failed.values())
    first_seen: dict[int, float] = {}
    for j in journal:
        first_seen[j.attempt] = min(first_seen.get(j.attempt, j.started_at), j.started_at)
    for e in events:
        if e.kind == "log" and e.attempt:
            first_seen[e.attempt] = min(first_seen.get(e.attempt, e.ts), e.ts)
    out: list[dict[str, Any]] = []
    if run.started_at is None:
        return out
    prev_end = run.started_at
    for n in range(1, run.attempt + 1):
        fail = failed.get(n)
        candidates = [t for t in (first_seen.get(n),) if t is not None]
        if n == 1:
            candidates.append(run.started_at)
        is_current = n == run.attempt
        if (is_current and run.segment_started_at is not None
                and run.segment_started_at >= prev_end
                and run.status not in (RunStatus.QUEUED, RunStatus.DEQUEUED)):
            candidates.append(run.segment_started_at)
        if not candidates and fail is None:
            # Not started yet: a retry waiting for its backoff.
            out.append({"n": n, "start": prev_end, "end": run.available_at,
                        "outcome": "scheduled", "error": None, "active_seconds": None})
            break
        start = min(candidates) if candidates else prev_end
        err: dict[str, Any] | None
        active: float | None = None
        if fail is not None:
            end: float | None = fail.ts
            outcome = "failed"
            err = fail.data if isinstance(fail.data, dict) else {"message": fail.message}
            active = fail.active_seconds
        elif is_current:
            end = run.finished_at
            outcome = str(run.status).lower()
            # run.error of a live run is an earlier attempt's (kept across retries).
            err = run.error if run.is_final and run.status != RunStatus.COMPLETED else None
            if run.status in (RunStatus.QUEUED, RunStatus.DEQUEUED):
                outcome = "handed back"
            active = max(0.0, run.active_seconds - ended_active)
            if (now is not None and run.status == RunStatus.EXECUTING
                    and run.segment_started_at is not None):
                active += max(0.0, now - run.segment_started_at)
        else:
            end, outcome, err = prev_end, "unknown", None
        out.append({"n": n, "start": start, "end": end, "outcome": outcome, "error": err,
                    "active_seconds": active})
        prev_end = end if end is not None else start
    return out


def build(store: RunReads, run: Run, journal: list[JournalEntry], events: list[RunEvent],
          children: list[Run], now: float) -> Timeline:
    t0 = run.created_at
    rows: list[Row] = []
    live = not run.is_final

    rows.append(_queued_row(run, now, live))

    for a in attempts(run, journal, events, now):
        cls = {"failed": "failed", "completed": "ok", "scheduled": "scheduled",
               "executing": "executing", "waiting": "waiting"}.get(a["outcome"], "neutral")
        msg = (a["error"] or {}).get("message") if a["error"] else None
        title = f"attempt {a['n']}: {a['outcome']}" + (f" — {msg}" if msg else "")
        end = a["end"]
        span = (end if end is not None else now) - a["start"]
        note = f"{a['outcome']} · {duration(span)}"
        if a["active_seconds"] is not None:  # the billed time: without parked waits
            note += f" · active {duration(a['active_seconds'])}"
        rows.append(Row(f"Attempt {a['n']}", "attempt", [Bar(a["start"], end, cls, title)],
                        note=note))

    rows += _journal_rows(store, run, journal, now, live)
    rows += _child_rows(children)

    ticks = [
        Tick(e.ts, f"log-{e.level or 'info'}", f"{(e.level or 'info').upper()} {e.message or ''}")
        for e in events if e.kind == "log"
    ][-MAX_TICKS:]

    t1 = run.finished_at if run.finished_at is not None else now
    for row in rows:
        for b in row.bars:
            t1 = max(t1, b.end if b.end is not None else now, b.start)
    for t in ticks:
        t1 = max(t1, t.ts)
    span = max(t1 - t0, 1e-3)
    for row in rows:
        for b in row.bars:
            end = b.end if b.end is not None else now
            b.left = _pct(b.start - t0, span)
            b.width = max(min(_pct(end - b.start, span), 100.0 - b.left), 0.4)
    for t in ticks:
        t.left = _pct(t.ts - t0, span)
    axis = [(i * 25.0, "+" + duration(span * i / 4) if i else "0") for i in range(5)]
    return Timeline(t0=t0, t1=t1, rows=rows, ticks=ticks, axis=axis, live=live)


def _queued_row(run: Run, now: float, live: bool) -> Row:
    t0 = run.created_at
    # Before the first attempt: delayed, then queued.
    pre_end = run.started_at if run.started_at is not None else (None if live else run.finished_at)
    pre: list[Bar] = []
    if run.delay_until is not None:
        pre.append(Bar(t0, run.delay_until, "delayed", f"delayed until {when(run.delay_until)}"))
        queued_from = run.delay_until
    else:
        queued_from = t0
    if pre_end is None or pre_end > queued_from:
        pre.append(Bar(queued_from, pre_end, "queued", "waiting in the queue"))
    return Row("Queued", "queue", pre, note=duration((pre_end or now) - t0))


def _journal_rows(store: RunReads, run: Run, journal: list[JournalEntry], now: float,
                  live: bool) -> list[Row]:
    rows: list[Row] = []
    wait_lookups = 0
    for j in journal:
        end = j.finished_at
        cls = "step"
        label = j.key
        note = j.kind
        if j.kind in WAIT_KINDS and j.waitpoint_id:
            cls = "wait"
            if j.waitpoint_id and wait_lookups < MAX_WAIT_LOOKUPS:
                wait_lookups += 1
                wp = store.get_waitpoint(run.env, j.waitpoint_id)
                if wp is not None and wp.completed_at is not None:
                    end = wp.completed_at
                    cls = "wait-done" if wp.status == "completed" else "failed"
                    note = f"{j.kind} · {wp.status.replace('_', ' ')}"
                elif wp is not None:
                    note = f"{j.kind} · pending"
            if end is None and not live:
                end = run.finished_at
        elif j.kind in WAIT_KINDS or j.kind == "sleep":
            cls = "wait-done"
        elif j.kind in ("create_token", "trigger"):
            cls = "marker"
        span = (end if end is not None else now) - j.started_at
        title = f"{j.kind} {j.key} (attempt {j.attempt}): {duration(span)}"
        rows.append(Row(label, j.kind, [Bar(j.started_at, end, cls, title)],
                        note=f"{note} · {duration(span)}"))
    return rows


def _child_rows(children: list[Run]) -> list[Row]:
    rows: list[Row] = []
    for c in children[:MAX_CHILDREN]:
        end = c.finished_at if c.is_final else None
        status = str(c.status)
        cls = {"COMPLETED": "ok", "FAILED": "failed", "TIMED_OUT": "failed",
               "EXECUTING": "executing", "WAITING": "waiting"}.get(status, "queued")
        href = f"/runs/{c.id}"
        rows.append(Row(c.task_id, "child",
                        [Bar(c.created_at, end, cls, f"child {c.id}: {status}", href)],
                        note=status.lower(), href=href, indent=1))
    return rows


def _pct(x: float, span: float) -> float:
    return round(max(0.0, min(100.0, x / span * 100.0)), 3)
