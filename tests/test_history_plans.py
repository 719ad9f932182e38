"""Queries over runs go by an index, not a scan of the history (issue 18): the run lists
by status, retention's batches and the version counts, each on a database of mostly
COMPLETED runs. runs_env_status_live holds every run but a COMPLETED one, so a list of
FAILED or live runs must use it; a list of COMPLETED runs goes by runs_env_idp.

Plans, not timings: EXPLAIN (PostgreSQL) and EXPLAIN QUERY PLAN (SQLite) of the SQL the
store builds, caught on its way to the database, after ANALYZE. (Without sqlite_stat1,
SQLite lists runs of two or more statuses by runs_env_idp, to save the sort: a walk back
through the history until it finds enough of them.)"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from outlast import task
from outlast.client import Client
from outlast.store._retention_base import PruneRule
from outlast.store.base import Store


@task(id="plan-noop")
async def noop(payload: Any) -> None:
    return None


def _fill(store: Any, client: Client, backend: str) -> None:
    """20,000 COMPLETED runs, 20 FAILED and 5 QUEUED, copies of one triggered run."""
    run_id = client.trigger(noop, 0).id
    with store._transaction() as tx:
        cols = [r["name"] for r in store._raw(tx, "SELECT name FROM pragma_table_info('runs')",
                                               {})] if backend == "sqlite" else [
            r["column_name"] for r in store._raw(
                tx, "SELECT column_name FROM information_schema.columns WHERE table_name = "
                "'runs' AND table_schema = current_schema() ORDER BY ordinal_position", {})]
        series = ("(WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g "
                  "WHERE x < :n) SELECT x FROM g) AS g" if backend == "sqlite"
                  else "generate_series(1, CAST(:n AS INTEGER)) AS g(x)")
        for status, n, finished, base in (("COMPLETED", 20000, True, 0),
                                          ("FAILED", 20, True, 100000),
                                          ("QUEUED", 5, False, 200000)):
            # Ids as outlast makes them, "run_" and 26 digits, one millisecond apart
            # (older than the template's), so the lists' id keys differ as real ones do.
            at = f"g.x + {base}"
            ms = (f"printf('%010d', {at})" if backend == "sqlite"
                  else f"lpad(CAST({at} AS TEXT), 10, '0')")
            exprs = [{"id": f"'run_' || {ms} || '0000000000000000'",
                      "status": f"'{status}'",
                      "finished_at": "t.created_at" if finished else "NULL"}.get(c, f"t.{c}")
                     for c in cols]
            store._raw(tx, f"INSERT INTO runs ({', '.join(cols)}) SELECT {', '.join(exprs)} "
                           f"FROM runs t, {series} WHERE t.id = :id", {"n": n, "id": run_id})
        store._raw(tx, "ANALYZE", {})


def _plans(store: Any, backend: str, call: Callable[[], object]) -> list[str]:
    """The plans of the SELECTs over ``runs r`` that ``call`` sends (each answered with
    no rows instead of run)."""
    plans: list[str] = []
    raw = store._raw
    prefix = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "

    def spy(tx: Any, sql: str, params: Any) -> list[dict[str, Any]]:
        if sql.lstrip().startswith("SELECT") and "FROM runs r" in sql:
            rows = raw(tx, prefix + sql, params)
            plans.append(" | ".join(str(v) for r in rows for v in r.values()))
            return []
        return list(raw(tx, sql, params))

    store._raw = spy
    try:
        call()
    finally:
        del store._raw
    assert plans
    return plans


def _full_scan(plan: str) -> bool:
    """A scan of the whole table (SQLite's "SCAN runs USING INDEX x" walks all of x: the
    callers check which index)."""
    return "Seq Scan on runs" in plan or bool(re.search(r"SCAN (r|runs)\b(?! USING)", plan))


@pytest.mark.parametrize("status, indexes", [
    # runs_failed (finished_at) over FAILED and TIMED_OUT runs is smaller still
    (["FAILED"], ("runs_env_status_live", "runs_failed")),
    (["QUEUED", "EXECUTING"], ("runs_env_status_live",)),
    (["COMPLETED"], ("runs_env_idp",)),
])
def test_run_lists_by_status_use_an_index(
    store: Store, client: Client, backend: str, status: list[str], indexes: tuple[str, ...]
) -> None:
    _fill(store, client, backend)
    (plan,) = _plans(store, backend, lambda: store.list_runs("dev", status=status, limit=50))
    assert any(i in plan for i in indexes) and not _full_scan(plan), plan


def test_retention_batches_and_version_counts_use_an_index(
    store: Store, client: Client, backend: str
) -> None:
    _fill(store, client, backend)
    rule = PruneRule(env="dev", cutoff=time.time() + 86400)
    plans = _plans(store, backend, lambda: store.prune_batch(rule, 100))
    assert len(plans) == 5  # one per final status
    for plan in plans:
        assert not _full_scan(plan), plan
        assert "runs_env_status_live" in plan or "runs_env_idp" in plan or "runs_pkey" in plan \
            or "sqlite_autoindex_runs" in plan, plan
    assert sum("runs_env_status_live" in p or "runs_failed" in p for p in plans) == 4, plans
    with store._transaction() as tx:  # type: ignore[attr-defined]
        sql = ("EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN ") + (
            "SELECT version, status, COUNT(*) AS n FROM runs WHERE env = :env AND status IN "
            "('DELAYED', 'QUEUED', 'DEQUEUED', 'EXECUTING', 'WAITING') "
            "AND status <> 'COMPLETED' AND version IS NOT NULL GROUP BY version, status")
        plan = " | ".join(str(v) for r in store._raw(tx, sql, {"env": "dev"})  # type: ignore[attr-defined]
                          for v in r.values())
    assert "runs_env_status_live" in plan, plan


@pytest.mark.parametrize("name", ["paused_holding", "list_workers", "usage_executing"])
def test_worker_queries_go_by_the_index_of_runs_in_flight(
    store: Store, client: Client, backend: str, name: str
) -> None:
    """Every heartbeat asks paused_holding, and the scheduler's usage sample counts the
    runs executing: without runs_executing's predicate word for word, SQLite scanned
    every run of the history each time."""
    from outlast.store._rows import load_queries

    _fill(store, client, backend)
    sql = load_queries(backend)[name]
    prefix = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
    with store._transaction() as tx:  # type: ignore[attr-defined]
        rows = store._raw(tx, prefix + sql, {"id": "w", "env": "dev"})  # type: ignore[attr-defined]
    plan = " | ".join(str(v) for r in rows for v in r.values())
    assert not _full_scan(plan), plan
    assert "runs_executing" in plan or "runs_env_status_live" in plan, plan
