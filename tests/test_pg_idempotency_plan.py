"""PostgreSQL: a keyed trigger reaches the key's active run through the unique index
only (the upsert's arbiter), whatever the statistics say. A lookup by (env, task_id,
key) left the index to the planner, which, with statistics taken before a task had
runs, scanned runs_env_task: every run of the task per keyed trigger, so a batch of
8,000 keyed runs took 29 s, and 109 s with 8,000 more already there (2.4 s and 2.1 s
through the arbiter)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from outlast import task
from outlast._trigger import task_run
from outlast.store import open_store
from outlast.store.postgres import PostgresStore
from outlast.tasks import TriggerOptions
from tests.conftest import _pg_url, drop_pg_database, new_pg_database


@task(id="keyed-plan")
async def keyed(payload: Any) -> None:
    return None


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    name = new_pg_database()
    s = open_store(_pg_url(name))
    assert isinstance(s, PostgresStore)
    try:
        yield s
    finally:
        s.close()
        drop_pg_database(name)


def _runs(*keys: str) -> list[Any]:
    return [task_run(keyed, {"i": i}, TriggerOptions(idempotency_key=k), "dev")
            for i, k in enumerate(keys)]


def test_the_keyed_trigger_plan_uses_the_unique_index_with_stale_statistics(
    store: PostgresStore,
) -> None:
    with store._pool.connection() as conn:
        conn.execute("ANALYZE runs")  # statistics of a task with no runs yet
    store.trigger(_runs(*(f"k{i}" for i in range(2000))))
    sql = store.q["upsert_run_idempotent"]
    with store._pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("BEGIN")
        row = store._run_row(_runs("k5")[0], store.now())
        plan = "\n".join(r["QUERY PLAN"] if isinstance(r, dict) else r[0]
                         for r in cur.execute(f"EXPLAIN {sql}", row).fetchall())
        cur.execute("ROLLBACK")
    assert "Conflict Arbiter Indexes: runs_idempotency" in plan, plan
    assert "runs_env_task" not in plan, plan


def test_a_key_is_held_then_released_when_its_run_failed(store: PostgresStore) -> None:
    first = store.trigger(_runs("order-1"))[0]
    again = store.trigger(_runs("order-1"))[0]
    assert (again.id, again.is_cached) == (first.id, True)
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET status = 'FAILED' WHERE id = %s", (first.id,))
    fresh = store.trigger(_runs("order-1"))[0]
    assert not fresh.is_cached and fresh.id != first.id
    with psycopg.connect(store.url) as conn:
        held = conn.execute(
            "SELECT id FROM runs WHERE idempotency_key = 'order-1' AND idempotency_active = 1"
        ).fetchall()
    assert held == [(fresh.id,)]
