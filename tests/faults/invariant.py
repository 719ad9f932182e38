"""The liveness invariant (C10), checked at the end of every fault test.

No run may stay EXECUTING or DEQUEUED without a live holder whose lease is current on the
database clock, and every unfinished run must be executing, waiting on something it can
name and that can still resume it, or queued with a reason. ``check_liveness`` runs the
reaper once itself (a fault test may have killed every process that would), then reads
the tables directly, not through the code under test, and fails with the offending runs.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outlast import explain
from outlast.runs import RunStatus
from outlast.store import open_store

_HELD_BY_NO_LIVE_HOLDER = """
SELECT r.id, r.status, r.worker_id, w.status AS worker_status,
       w.lease_expires_at AS lease_expires_at
FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
WHERE r.status IN ('EXECUTING', 'DEQUEUED')
  AND (w.id IS NULL OR w.status <> 'alive' OR w.lease_expires_at < {now})
ORDER BY r.id
"""

_COUNTS = "SELECT status, COUNT(*) AS n FROM runs GROUP BY status"

# WAITING runs nothing will resume: a run parks on its waitpoints (run_waits) and the
# completion of any one of them queues it again in the same transaction, so a committed
# WAITING run with no waitpoint, or with one already completed or timed out, or waiting on
# children that have all ended while their waitpoint is still pending, is stuck for good.
# (The 100,000-run soak's 50 stuck runs were the second kind; explain.why still named
# their sleeps, so the "cannot say why" check passed them.)
_WAITING_ON_NOTHING = """
SELECT r.id, r.task_id,
       (SELECT COUNT(*) FROM run_waits rw WHERE rw.run_id = r.id) AS waits,
       (SELECT MIN(w.kind || ':' || w.status) FROM run_waits rw
        JOIN waitpoints w ON w.id = rw.waitpoint_id WHERE rw.run_id = r.id) AS waitpoint
FROM runs r
WHERE r.status = 'WAITING' AND (
    NOT EXISTS (SELECT 1 FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id
                WHERE rw.run_id = r.id)
    OR EXISTS (
        SELECT 1 FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id
        WHERE rw.run_id = r.id AND (
            w.status <> 'pending'
            OR (w.kind = 'children' AND NOT EXISTS (
                SELECT 1 FROM runs c WHERE c.parent_waitpoint_id = w.id
                AND c.status NOT IN ({final}))))))
ORDER BY r.id
"""


@dataclass
class Figures:
    """What a fault test measured: every figure but ``repeats`` must be 0 to pass."""

    runs: int = 0
    finished: int = 0
    lost: int = 0  # acknowledged but not in the database
    stuck: list[dict[str, Any]] = field(default_factory=list)  # held by no live holder
    # WAITING with nothing left to resume them (_WAITING_ON_NOTHING)
    parked: list[dict[str, Any]] = field(default_factory=list)
    unexplained: list[tuple[str, str]] = field(default_factory=list)
    repeats: int = 0  # step bodies run more than once (legitimate only across a fault)
    by_status: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"runs {self.runs}, finished {self.finished}, lost {self.lost}, "
            f"stuck {len(self.stuck)}, parked for good {len(self.parked)}, "
            f"unexplained {len(self.unexplained)}, "
            f"step repeats {self.repeats}, by status {self.by_status}"
        )


def _rows(db_url: str, sql: str) -> list[dict[str, Any]]:
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql)]
        finally:
            conn.close()
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as pg:
        return list(pg.execute(sql.encode()).fetchall())


def held_by_no_live_holder(db_url: str) -> list[dict[str, Any]]:
    """Runs EXECUTING or DEQUEUED whose worker is gone, not alive, or past its lease,
    on the database's clock (PostgreSQL's server clock; the machine's for SQLite)."""
    if db_url.startswith("sqlite"):
        now = "(julianday('now') - 2440587.5) * 86400.0"
    else:
        now = "extract(epoch from clock_timestamp())"
    return _rows(db_url, _HELD_BY_NO_LIVE_HOLDER.format(now=now))


def waiting_on_nothing(db_url: str) -> list[dict[str, Any]]:
    """WAITING runs that nothing will resume: no waitpoint, one already completed or
    timed out, or children all ended under a waitpoint still pending."""
    final = ", ".join(f"'{s.value}'" for s in RunStatus if s.is_final)
    return _rows(db_url, _WAITING_ON_NOTHING.format(final=final))


def check_liveness(
    db_url: str,
    *,
    env: str = "dev",
    acknowledged: set[str] | None = None,
    repeats: int = 0,
    reap: bool = True,
) -> Figures:
    """Run the reaper once, then measure the invariant. Fails on any run held by no live
    holder, any acknowledged run missing, any WAITING run nothing will resume, or any
    unfinished run that cannot say why."""
    store = open_store(db_url)
    try:
        if reap:
            store.tick()
            store.reap_dead_workers()
        figures = Figures(repeats=repeats)
        figures.by_status = {r["status"]: int(r["n"]) for r in _rows(db_url, _COUNTS)}
        figures.runs = sum(figures.by_status.values())
        figures.finished = sum(
            n for s, n in figures.by_status.items() if RunStatus(s).is_final
        )
        if acknowledged is not None:
            present = {r.id for r in store.get_runs(env, sorted(acknowledged))}
            figures.lost = len(acknowledged - present)
        figures.stuck = held_by_no_live_holder(db_url)
        figures.parked = waiting_on_nothing(db_url)
        for run in store.list_runs(env, limit=200, status=_UNFINISHED):
            reason = explain.why(store, run)
            if not reason:
                figures.unexplained.append((run.id, run.status.value))
    finally:
        store.close()
    print(f"liveness: {figures.line()}")
    assert figures.lost == 0, f"{figures.lost} acknowledged runs are missing"
    assert not figures.stuck, f"runs held by no live holder: {figures.stuck[:10]}"
    assert not figures.parked, (
        f"{len(figures.parked)} WAITING runs nothing will resume: {figures.parked[:10]}"
    )
    assert not figures.unexplained, f"unfinished runs with no reason: {figures.unexplained[:10]}"
    return figures


_UNFINISHED = [s.value for s in RunStatus if not s.is_final]
