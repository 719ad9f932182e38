"""C10 at the store: claims are fenced on a live holder, the reaper requeues runs held by
no live holder whatever the holder's row says, and a cancel of such a run finishes it.

In-process, fake clock, both backends; each test ends with the invariant check."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

from outlast import task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store._rows import load_queries
from outlast.store.base import Store, WorkerInfo

from .invariant import check_liveness


@task(id="fault-held")
async def held(payload: dict[str, Any]) -> None:
    return None


SERVES = {held.queue.name: [held.id]}


def _register(store: Store, worker_id: str, lease: float = 30.0) -> None:
    store.register_worker(
        WorkerInfo(id=worker_id, env="dev", host="test", pid=1, concurrency=10,
                   tasks=[held.id], lease_seconds=lease)
    )


def _executing(store: Store) -> tuple[int, int]:
    """The queue's and its key's counts of runs holding a slot."""
    state = store.queue_state("dev", held.queue.name, "")
    assert state is not None
    return int(state["executing"]), int(state["key_executing"])


def test_a_worker_marked_dead_gets_no_claims(
    store: Store, client: Client, clock: FakeClock, db_url: str
) -> None:
    """Defect 2: a worker whose row was marked dead kept claiming under its dead id."""
    ids = [client.trigger(held, {}).id for _ in range(3)]
    _register(store, "w_dead", lease=5.0)
    clock.advance(6)
    assert store.tick().reaped_workers == 1  # a peer declared it dead; the process lives on
    assert not store.heartbeat("w_dead", 5.0).alive
    assert store.claim("w_dead", "dev", SERVES, 10) == []
    _ok, claims = store.apply_and_claim("w_dead", [], "dev", SERVES, 10)
    assert claims == []
    assert {store.get_run("dev", i).status for i in ids} == {RunStatus.QUEUED}  # type: ignore[union-attr]
    check_liveness(db_url)


def test_a_worker_past_its_lease_gets_no_claims(
    store: Store, client: Client, clock: FakeClock, db_url: str
) -> None:
    client.trigger(held, {})
    _register(store, "w_late", lease=5.0)
    clock.advance(6)  # no reaper has run: the database clock alone refuses it
    assert store.claim("w_late", "dev", SERVES, 10) == []
    store.heartbeat("w_late", 5.0)
    assert len(store.claim("w_late", "dev", SERVES, 10)) == 1
    store.stop_worker("w_late")
    check_liveness(db_url)


def test_runs_of_a_worker_no_longer_alive_are_requeued(
    store: Store, client: Client, db_url: str
) -> None:
    """Defects 1-3: runs left EXECUTING under a worker already marked dead or stopped were
    never reaped (the reaper looked only at workers marked alive)."""
    ids = [client.trigger(held, {}).id for _ in range(4)]
    _register(store, "w_gone")
    claims = store.claim("w_gone", "dev", SERVES, 10)
    assert len(claims) == 4
    assert _executing(store) == (4, 4)
    store.stop_worker("w_gone")  # its row no longer says alive; its runs are still held
    report = store.tick()
    runs = store.get_runs("dev", ids)
    assert [r.status for r in runs] == [RunStatus.QUEUED] * 4, report
    assert all(r.worker_id is None and r.attempt == 2 for r in runs)
    assert {r.error["code"] for r in runs if r.error} == {"worker_lost"}
    assert _executing(store) == (0, 0)  # the slots came back (C5)
    # Their slots were given back: a live worker takes all four again.
    _register(store, "w_next")
    assert len(store.claim("w_next", "dev", SERVES, 10)) == 4
    store.stop_worker("w_next")
    store.tick()
    check_liveness(db_url)


def test_cancel_of_a_run_whose_holder_is_gone_finishes_it(
    store: Store, client: Client, db_url: str
) -> None:
    """Defect 2: `runs cancel` answered "cancel requested" and nothing finished the run."""
    run_id = client.trigger(held, {}).id
    _register(store, "w_cut")
    store.claim("w_cut", "dev", SERVES, 10)
    store.stop_worker("w_cut")
    run, ended = store.cancel("dev", run_id)
    assert run.status == RunStatus.CANCELED and ended == [run_id]
    assert _executing(store) == (0, 0)
    check_liveness(db_url)


def test_cancel_of_a_run_with_a_live_holder_still_asks_it(
    store: Store, client: Client, db_url: str
) -> None:
    run_id = client.trigger(held, {}).id
    _register(store, "w_live")
    (_claim,) = store.claim("w_live", "dev", SERVES, 10)
    run, ended = store.cancel("dev", run_id)
    assert run.status == RunStatus.EXECUTING and run.cancel_requested and ended == []
    assert store.heartbeat("w_live", 30.0).cancel_requested == [run_id]
    check_liveness(db_url)


def test_the_orphan_scan_reads_only_the_runs_in_flight(db_url: str) -> None:
    """The reaper's scan runs every tick: it must go through the partial index over
    EXECUTING/DEQUEUED runs, never over the whole (mostly finished) table."""
    sql = load_queries("sqlite" if db_url.startswith("sqlite") else "postgres")["orphaned_runs"]
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, {"now": 0}))
        finally:
            conn.close()
    else:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")  # an empty table: ask what it can use
            rows = conn.execute(("EXPLAIN " + sql.replace(":now", "0")).encode()).fetchall()
            plan = " ".join(r[0] for r in rows)
    assert "runs_executing" in plan, plan
