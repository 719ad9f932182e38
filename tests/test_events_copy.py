"""A batch publish keeps its guarantees whichever way its events are written.

PostgreSQL copies a batch's events (COPY, no ON CONFLICT) with sequence numbers drawn
ahead; an id still deduplicating fails the COPY, the transaction rolls back, and the batch
is published again by the INSERT path. These tests hold on both backends: a retried batch creates
nothing new and answers with the first runs; a batch mixing new, taken, repeated and
expired ids runs exactly the new ones; an event id a concurrent publisher holds
uncommitted is a duplicate once it commits (the race), and a new event if it rolls back;
a batch resumes the waits on its names.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from outlast import CancelOn, Debounce, task
from outlast._clock import FakeClock
from outlast._events import Planner, new_event
from outlast.client import Client
from outlast.store._events_base import EventRecord, Fanout, NewEvent, PublishResult
from outlast.store._sql_events import _Batch, plan_event
from outlast.store.base import Store
from tests.conftest import wait_for_lock_waiter


@task(id="copy-first", on=["copy.signup"])
async def first(payload: Any) -> None: ...


@task(id="copy-second", on=["copy.*"])
async def second(payload: Any) -> None: ...


SUBSCRIBERS = (first, second)


def _rows(store: Store, sql: str) -> list[Any]:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        return list(store._raw(tx, sql, {}))  # type: ignore[attr-defined]


def _batch(ids: list[str], name: str = "copy.signup") -> list[dict[str, Any]]:
    return [{"name": name, "data": {"id": i}, "id": i} for i in ids]


def _count_fallbacks(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the INSERT path for a batch's events (PostgreSQL's fallback from COPY)."""
    calls: list[int] = []
    insert = store._insert_events  # type: ignore[attr-defined]

    def counted(tx: Any, batch: Any, events: Any, plans: Any) -> Any:
        calls.append(len(events))
        return insert(tx, batch, events, plans)

    monkeypatch.setattr(store, "_insert_events", counted)
    return calls


def test_a_retried_batch_creates_nothing_and_answers_with_the_first_runs(
    store: Store, client: Client, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])
    fallbacks = _count_fallbacks(store, monkeypatch)
    ids = [f"r{i}" for i in range(50)]
    first_try = client.publish_many(_batch(ids))
    assert [r.duplicate for r in first_try] == [False] * 50
    assert all(len(r.run_ids) == 2 for r in first_try)
    if backend == "postgres":
        assert fallbacks == []  # copied
    retry = client.publish_many(_batch(ids))
    assert [r.duplicate for r in retry] == [True] * 50
    assert [sorted(r.run_ids) for r in retry] == [sorted(r.run_ids) for r in first_try]
    if backend == "postgres":
        assert fallbacks == [50]  # the COPY failed on a taken id, the INSERT path answered
    assert len(client.list_runs(limit=1000)) == 100
    assert _rows(store, "SELECT COUNT(*) AS n FROM events")[0]["n"] == 50


def test_a_repeat_within_a_copied_batch_answers_with_the_first_runs(
    store: Store, client: Client, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch by COPY makes a streamed event's result as its runs go (_planned_runs): an
    id repeated later in the batch is a duplicate answering with those runs, and makes
    none of its own."""
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])
    fallbacks = _count_fallbacks(store, monkeypatch)
    results = client.publish_many(_batch(["a", "b", "a"]))
    assert [r.duplicate for r in results] == [False, False, True]
    assert len(results[0].run_ids) == 2
    assert results[2].run_ids == results[0].run_ids
    if backend == "postgres":
        assert fallbacks == []  # copied, the repeat too
    runs = client.list_runs(limit=100)
    assert sorted(r.id for r in runs) == sorted(results[0].run_ids + results[1].run_ids)


def test_a_batch_of_new_taken_repeated_and_expired_ids_runs_the_new_ones_once(
    store: Store, client: Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])
    monkeypatch.setenv("OUTLAST_EVENT_DEDUP_SECONDS", "60")
    old = client.publish_many(_batch(["expired", "spare"]))
    clock.advance(61)  # "expired" and "spare" stop deduplicating
    taken = client.publish_many(_batch(["taken", "other"]))
    results = client.publish_many(
        _batch(["new1", "taken", "new2", "new1", "expired"])
        + _batch(["login"], name="copy.login"))
    assert [r.duplicate for r in results] == [False, True, False, True, False, False]
    assert sorted(results[1].run_ids) == sorted(taken[0].run_ids)
    assert results[3].run_ids == results[0].run_ids  # a repeat within the batch
    assert len(results[4].run_ids) == 2
    assert set(results[4].run_ids).isdisjoint(old[0].run_ids)  # a new event, new runs
    assert [len(r.run_ids) for r in results] == [2, 2, 2, 2, 2, 1]  # login: copy.* only
    assert len(client.list_runs(limit=1000)) == 2 * 2 + 2 * 2 + 2 * 3 + 1
    logged = client.list_events(limit=100)
    # Newest first: an id past its window is inserted again after the others (released,
    # then inserted), as on the INSERT path.
    assert [e["id"] for e in logged][:4] == ["expired", "login", "new2", "new1"]
    by_id = {e["id"]: e for e in logged}
    assert sorted(d["run_id"] for d in by_id["new2"]["deliveries"]) == sorted(
        results[2].run_ids)
    seqs = _rows(store, "SELECT id, seq FROM events ORDER BY seq")
    assert [r["id"] for r in seqs] == ["expired", "spare", "taken", "other", "new1", "new2",
                                       "login", "expired"]


def _hold_event(conn: psycopg.Connection[Any], store: Store, event_id: str) -> None:
    """Insert an event in an open transaction, as a concurrent publisher (of another
    name, so no name lock orders the two) has before its commit."""
    now = store.now()
    conn.execute(store.q["ev_insert_one"], {  # type: ignore[attr-defined]
        "env": "dev", "id": event_id, "name": "copy.elsewhere", "data": "{}", "now": now,
        "dedup_until": now + 3600, "expires_at": now + 7200,
        "fanout": '[["copy-second", "run_held", "run", null]]'})


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_an_id_a_concurrent_publisher_holds_is_a_duplicate_once_it_commits(
    store: Store, client: Client, db_url: str, backend: str, outcome: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend != "postgres":
        pytest.skip("SQLite's write transactions take turns: no insert waits on another")
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])
    fallbacks = _count_fallbacks(store, monkeypatch)
    with psycopg.connect(db_url) as conn:
        _hold_event(conn, store, "held")
        result: list[Any] = []
        publishing = threading.Thread(
            target=lambda: result.append(client.publish_many(_batch(["a", "held", "b"]))))
        publishing.start()
        try:
            wait_for_lock_waiter(db_url, time.monotonic() + 30,
                                 'the batch never waited for the concurrent publisher')
        finally:
            conn.commit() if outcome == "commit" else conn.rollback()
            publishing.join(30)
    assert result, "the batch publish did not return"
    a, held, b = result[0]
    assert not a.duplicate and not b.duplicate
    assert len(a.run_ids) == 2 and len(b.run_ids) == 2
    if outcome == "commit":
        assert held.duplicate and held.run_ids == ["run_held"]  # the other's runs
        assert fallbacks == [3]  # the COPY failed on the id, the INSERT path answered
        assert len(client.list_runs(limit=100)) == 4
    else:
        assert not held.duplicate and len(held.run_ids) == 2
        assert fallbacks == []  # the COPY went through once the other rolled back
        assert len(client.list_runs(limit=100)) == 6
    counts = _rows(store, "SELECT id, COUNT(*) AS n FROM events GROUP BY id ORDER BY id")
    assert [(r["id"], r["n"]) for r in counts] == [("a", 1), ("b", 1), ("held", 1)]


def test_a_batch_resumes_the_waits_on_its_names(store: Store, client: Client) -> None:
    store.publish_tasks("dev", [first.definition()])
    now = store.now()
    with store._transaction() as tx:  # type: ignore[attr-defined]  # as register_event_wait
        tx.x("insert_waitpoint", id="wp_copy", env="dev", kind="event", run_id=None,
             timeout_at=None, idempotency_key=None, idempotency_expires_at=None, tags="[]",
             pending_children=0, now=now)
        tx.x("ev_insert_wait", waitpoint_id="wp_copy", env="dev", name="copy.signup",
             match_path="data.id", match_value='"w2"', expr=None, now=now)
    results = client.publish_many(_batch(["w1", "w2", "w3"]))
    assert [len(r.run_ids) for r in results] == [1, 1, 1]  # copy-first's
    rows = _rows(store, "SELECT status, output FROM waitpoints WHERE id = 'wp_copy'")
    assert rows[0]["status"] == "completed", rows
    assert '"w2"' in rows[0]["output"]



def test_a_wait_registered_while_a_batch_waits_for_its_names_lock_is_resumed(
    store: Store, client: Client, db_url: str, backend: str
) -> None:
    # The statement taking the batch's locks read its waits with a snapshot from before
    # the lock wait: they must be read again, or this wait would be missed.
    if backend != "postgres":
        pytest.skip("SQLite's write transactions take turns: no statement waits on a row")
    store.publish_tasks("dev", [first.definition()])
    client.publish_many(_batch(["warm1", "warm2"]))  # the subscribers cached
    q = store.q  # type: ignore[attr-defined]
    now = store.now()
    with psycopg.connect(db_url) as conn:  # a wait registering, as register_event_wait does
        conn.execute(q["ev_lock_name"], {"env": "dev", "name": "copy.signup", "now": now})
        conn.execute(q["insert_waitpoint"], {
            "id": "wp_late", "env": "dev", "kind": "event", "run_id": None,
            "timeout_at": None, "idempotency_key": None, "idempotency_expires_at": None,
            "tags": "[]", "pending_children": 0, "now": now})
        conn.execute(q["ev_insert_wait"], {
            "waitpoint_id": "wp_late", "env": "dev", "name": "copy.signup",
            "match_path": "data.id", "match_value": '"l2"', "expr": None, "now": now})
        result: list[Any] = []
        publishing = threading.Thread(
            target=lambda: result.append(client.publish_many(_batch(["l1", "l2", "l3"]))))
        publishing.start()
        try:
            wait_for_lock_waiter(db_url, time.monotonic() + 30,
                                 'the batch never waited for the concurrent publisher')
        finally:
            conn.commit()
            publishing.join(30)
    assert result and [len(r.run_ids) for r in result[0]] == [1, 1, 1]
    rows = _rows(store, "SELECT status, output FROM waitpoints WHERE id = 'wp_late'")
    assert rows[0]["status"] == "completed", rows
    assert '"l2"' in rows[0]["output"]


def test_a_batch_announces_its_runs_to_listening_workers(
    store: Store, client: Client, db_url: str, backend: str
) -> None:
    # The NOTIFY goes with COMMIT in one round trip (postgres._late_begin_transaction).
    if backend != "postgres":
        pytest.skip("SQLite's workers are woken in process, not by NOTIFY")
    store.publish_tasks("dev", [first.definition()])
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN outlast_work")
        client.publish_many(_batch(["n1", "n2"]))
        got = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert got == ["dev"]


def test_only_a_batchs_lock_statement_is_planned_generically(db_url: str, backend: str
                                                             ) -> None:
    # _LateBeginTx sets plan_cache_mode for the batch's lock statement and back after it:
    # the transaction's later statements (a cancel's, a group's) keep their custom plans.
    if backend != "postgres":
        pytest.skip("plan_cache_mode is PostgreSQL's")
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    from outlast.store._pg_tx import late_begin

    show = "SELECT current_setting('plan_cache_mode') AS m"
    queries = {"ev_lock_seqs_and_waits": show, "later": show}
    with ConnectionPool(db_url, min_size=1, max_size=1, kwargs={"row_factory": dict_row},
                        open=True) as pool:
        with late_begin(pool, queries) as tx:
            first = tx.q("ev_lock_seqs_and_waits")[0]["m"]
            later = tx.q("later")[0]["m"]
        with late_begin(pool, queries) as tx:  # another statement first: not generic
            other = tx.q("later")[0]["m"]
    assert (first, later, other) == ("force_generic_plan", "auto", "auto")


def test_records_fan_outs_and_results_a_batch_builds_equal_their_constructors(
    store: Store, client: Client
) -> None:
    """A batch builds them without their frozen __init__ (once per event or run): each
    must still have every field its constructor sets (a dataclass compares them all)."""
    store.publish_tasks("dev", [first.definition()])
    results = client.publish_many(_batch(["c1", "c2"]))
    assert results == [PublishResult(r.id, False, r.run_ids) for r in results]
    assert results[0].id == "c1" and len(results[0].run_ids) == 1
    made = new_event("copy.signup", {"id": "c4"}, "c4", windows=(60.0, 120.0))
    built = NewEvent("c4", "copy.signup", '{"id":"c4"}', 60.0, 120.0)
    assert made == built and vars(made) == vars(built)
    batch = _Batch("dev", store.list_tasks("dev"), 5.0)
    event = NewEvent("c3", "copy.signup", '{"id": "c3"}', 60.0, 120.0)
    record, [fan] = plan_event(batch, event, Planner("dev"))
    assert record == EventRecord(seq=0, id="c3", env="dev", name="copy.signup",
                                 data={"id": "c3"}, created_at=5.0, data_json=event.data)
    assert fan == Fanout(first.id, "run", run=fan.run, reason=None)


@task(id="copy-cancellable", on=["copy.signup"],
      cancel_on=[CancelOn("copy.deleted", match="data.user_id")])
async def cancellable(payload: Any) -> None: ...


def test_an_event_cancelling_within_a_batch_cancels_the_runs_of_the_events_before_it(
    store: Store, client: Client
) -> None:
    """PostgreSQL writes a batch's runs as its events are planned, up to an event some
    task cancels on: a cancel meets the runs of the events before it in the batch (their
    cancel keys written with them), never those of the events after it."""
    store.publish_tasks("dev", [cancellable.definition(), first.definition()])
    results = client.publish_many([
        {"name": "copy.signup", "data": {"user_id": 1}, "id": "k1"},
        {"name": "copy.signup", "data": {"user_id": 2}, "id": "k2"},
        {"name": "copy.deleted", "data": {"user_id": 1}, "id": "k3"},
        {"name": "copy.signup", "data": {"user_id": 1}, "id": "k4"},
    ])

    def statuses(r: PublishResult) -> dict[str, str]:
        runs = [client.retrieve(i) for i in r.run_ids]
        return {run.task_id: run.status for run in runs}

    assert [statuses(r) for r in results] == [
        {"copy-cancellable": "CANCELED", "copy-first": "QUEUED"},
        {"copy-cancellable": "QUEUED", "copy-first": "QUEUED"},
        {},
        {"copy-cancellable": "QUEUED", "copy-first": "QUEUED"},
    ]
    assert len(client.list_runs(limit=100)) == 6
    again = client.publish_many([
        {"name": "copy.deleted", "data": {"user_id": 1}, "id": "k5"},
        {"name": "copy.signup", "data": {"user_id": 3}, "id": "k6"},
    ])
    # A cancelling event first: the runs after it in its batch are spared, k4's are not.
    assert statuses(again[1]) == {"copy-cancellable": "QUEUED", "copy-first": "QUEUED"}
    assert statuses(results[3]) == {"copy-cancellable": "CANCELED", "copy-first": "QUEUED"}


@task(id="copy-debounced", on=["copy.grouped"], debounce=Debounce("data.account", period=10))
async def debounced(payload: Any) -> None: ...


def test_a_batch_with_a_debounced_subscriber_in_its_middle_writes_each_run_once(
    store: Store, client: Client
) -> None:
    """A debounced run stops PostgreSQL's stream of a batch's runs (it may join a
    pending run); the events before it and after it keep one run per subscriber."""
    store.publish_tasks("dev", [first.definition(), debounced.definition()])
    results = client.publish_many([
        {"name": "copy.signup", "data": {"n": 1}, "id": "g1"},
        {"name": "copy.grouped", "data": {"account": "a", "n": 2}, "id": "g2"},
        {"name": "copy.grouped", "data": {"account": "a", "n": 3}, "id": "g3"},
        {"name": "copy.signup", "data": {"n": 4}, "id": "g4"},
    ])
    assert [len(r.run_ids) for r in results] == [1, 1, 1, 1]
    assert results[1].run_ids == results[2].run_ids  # one run for the burst
    assert client.retrieve(results[2].run_ids[0]).payload == {"account": "a", "n": 3}
    assert sorted(r.task_id for r in client.list_runs(limit=100)) == [
        "copy-debounced", "copy-first", "copy-first"]
