"""The fast paths of publishing (issue 20's benchmark) keep the guarantees of the slow ones.

- cancel_on finds the runs an event cancels by their match keys, written with each run
  (run_cancel_keys), through an index: not by reading every unfinished run of the task.
- A publisher keeps the subscribers it read; a definition another process publishes is
  seen by its next publish (the fingerprint is read in the publish's transaction, or in
  PostgreSQL's single statement).
- PostgreSQL's single publish in one statement never misses a wait registered while it
  waited for the name's lock: it then takes the transaction, which sees the wait.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from outlast import CancelOn, Retry, task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from tests.conftest import wait_for_lock_waiter


@task(id="fast-closable", cancel_on=[CancelOn("account.closed", match="data.account")])
async def closable(payload: dict[str, Any]) -> None: ...


@task(id="fast-first", on=["fast.signup"])
async def first(payload: Any) -> None: ...


@task(id="fast-second", on=["fast.*"])
async def second(payload: Any) -> None: ...


@task(id="fast-limited", on=["fast.limited"], queue="fast-q", max_duration=90.5,
      retry=Retry(max_attempts=7))
async def limited(payload: Any) -> None: ...


def _one(store: Store, sql: str, params: dict[str, Any]) -> list[Any]:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        return list(store._raw(tx, sql, params))  # type: ignore[attr-defined]


def test_cancel_on_finds_its_run_by_index_among_10000_unfinished(
    store: Store, client: Client, backend: str
) -> None:
    store.publish_tasks("dev", [closable.definition()])
    handles = client.batch_trigger(closable, [{"account": i} for i in range(10_000)])
    keys = _one(store, "SELECT COUNT(*) AS n FROM run_cancel_keys", {})
    assert int(keys[0]["n"]) == 10_000
    # The old match read every unfinished run of the task and compared payloads in
    # Python: make that query fail, so a publish that used it would raise.
    store.q["ev_unfinished_runs"] = "SELECT no_such_column FROM runs"  # type: ignore[attr-defined]
    client.publish("account.closed", {"account": 4321.0})  # 4321.0 == 4321: the same key
    assert client.retrieve(handles[4321].id).status == RunStatus.CANCELED
    cancelled = _one(store, "SELECT COUNT(*) AS n FROM runs WHERE status = 'CANCELED'", {})
    assert int(cancelled[0]["n"]) == 1
    assert client.retrieve(handles[4320].id).status == RunStatus.QUEUED
    # The lookup is an index search, at any size.
    sql = store.q["ev_cancel_keyed"]  # type: ignore[attr-defined]
    params = {"env": "dev", "task_id": closable.id, "path": "data.account", "value": "7"}
    if backend == "postgres":
        _one(store, "ANALYZE run_cancel_keys", {})
        _one(store, "ANALYZE runs", {})
    explain = "EXPLAIN " if backend == "postgres" else "EXPLAIN QUERY PLAN "
    with store._transaction() as tx:  # type: ignore[attr-defined]
        plan = tx.conn.execute(explain + sql, params).fetchall()  # as the store sends it
    assert "run_cancel_keys_match" in str(plan), plan


def test_a_subscriber_another_process_publishes_is_seen_by_the_next_publish(
    store: Store, client: Client, db_url: str, clock: FakeClock
) -> None:
    store.publish_tasks("dev", [first.definition()])
    assert len(client.publish("fast.signup", {"n": 1}).run_ids) == 1
    assert len(client.publish("fast.signup", {"n": 2}).run_ids) == 1  # from the cache
    other = open_store(db_url, clock)  # another server: same clock, same definitions time
    try:
        other.publish_tasks("dev", [second.definition()])
    finally:
        other.close()
    created = client.publish("fast.signup", {"n": 3}).run_ids
    assert sorted(client.retrieve(r).task_id for r in created) == [first.id, second.id]


def test_a_wait_registered_while_a_single_publish_waits_for_the_lock_is_resumed(
    store: Store, client: Client, db_url: str, backend: str
) -> None:
    if backend != "postgres":
        pytest.skip("SQLite's write transactions take turns: no statement waits on a row")
    store.publish_tasks("dev", [first.definition()])
    client.publish("fast.signup", {"n": 0})  # the subscribers are cached: the fast path
    q = store.q  # type: ignore[attr-defined]
    now = store.now()
    with psycopg.connect(db_url) as conn:  # a wait registering, as register_event_wait does
        conn.execute(q["ev_lock_name"], {"env": "dev", "name": "fast.signup", "now": now})
        conn.execute(q["insert_waitpoint"], {
            "id": "wp_fast", "env": "dev", "kind": "event", "run_id": None,
            "timeout_at": None, "idempotency_key": None, "idempotency_expires_at": None,
            "tags": "[]", "pending_children": 0, "now": now})
        conn.execute(q["ev_insert_wait"], {
            "waitpoint_id": "wp_fast", "env": "dev", "name": "fast.signup",
            "match_path": None, "match_value": None, "expr": None, "now": now})
        result: list[Any] = []
        publishing = threading.Thread(
            target=lambda: result.append(client.publish("fast.signup", {"n": 1})))
        publishing.start()
        try:
            wait_for_lock_waiter(db_url, time.monotonic() + 30,
                                 "the publish never waited for the name's lock")
        finally:
            conn.commit()
            publishing.join(30)
    assert result and len(result[0].run_ids) == 1
    rows = _one(store, "SELECT status, output FROM waitpoints WHERE id = 'wp_fast'", {})
    assert rows[0]["status"] == "completed", rows
    assert '"n": 1' in rows[0]["output"] or '"n":1' in rows[0]["output"]


def test_sqlite_single_publish_is_the_event_its_runs_and_its_waits_in_one_transaction(
    store: Store, client: Client, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's single publish; PostgreSQL's is the statement tested above")
    store.publish_tasks("dev", [first.definition(), second.definition()])
    client.publish("fast.signup", {"n": 0})  # the subscribers are cached: the fast path
    q = store.q  # type: ignore[attr-defined]
    now = store.now()
    with store._transaction() as tx:  # type: ignore[attr-defined]
        tx.x("insert_waitpoint", id="wp_fast", env="dev", kind="event", run_id=None,
             timeout_at=None, idempotency_key=None, idempotency_expires_at=None,
             tags="[]", pending_children=0, now=now)
        tx.x("ev_insert_wait", waitpoint_id="wp_fast", env="dev", name="fast.signup",
             match_path="data.n", match_value="1", expr=None, now=now)
    # The general path's statements fail: a publish that took it would raise.
    general = {k: q[k] for k in ("ev_tasks_version", "ev_insert_one", "ev_insert_rows")}
    q.update({k: "SELECT no_such_column FROM events" for k in general})
    sent: list[str] = []
    store._conn.set_trace_callback(sent.append)  # type: ignore[attr-defined]
    try:
        created = client.publish("fast.signup", {"n": 1}, id="evt_fast").run_ids
    finally:
        store._conn.set_trace_callback(None)  # type: ignore[attr-defined]
        q.update(general)
    assert sorted(client.retrieve(r).task_id for r in created) == [first.id, second.id]
    # One transaction: the event, its two runs (one prepared statement, a row each:
    # insert_lean_run), the wait.
    assert sent[0] == "BEGIN IMMEDIATE" and sent[-1] == "COMMIT", sent
    assert sum(s.lstrip().startswith("INSERT INTO events") for s in sent) == 1, sent
    assert sum(s.lstrip().startswith("INSERT INTO runs") for s in sent) == 2, sent
    rows = _one(store, "SELECT status, output FROM waitpoints WHERE id = 'wp_fast'", {})
    assert rows[0]["status"] == "completed", rows
    assert "evt_fast" in rows[0]["output"]
    event = client.list_events("fast.signup", limit=1)[0]
    assert sorted(d["run_id"] for d in event["deliveries"]) == sorted(created)
    # The same id again: a duplicate answered with the first publish's runs, nothing new.
    again = client.publish("fast.signup", {"n": 1}, id="evt_fast")
    assert again.duplicate and sorted(again.run_ids) == sorted(created)
    count = _one(store, "SELECT COUNT(*) AS n FROM runs WHERE task_id = :t", {"t": first.id})
    assert int(count[0]["n"]) == 2


def test_a_fan_out_run_has_the_row_a_trigger_of_the_same_task_writes(
    store: Store, client: Client
) -> None:
    # SQLite writes a fan-out's runs with their own statement (insert_lean_run, a few;
    # insert_lean_runs, more: tests/test_events_task_versions.py): every column but the
    # id, the payload and the metadata is what insert_run writes.
    store.publish_tasks("dev", [limited.definition()])
    for _ in range(2):  # the general path, then the single publish's
        published = client.publish("fast.limited", {"n": 1}).run_ids[0]
        triggered = client.trigger(limited, {"n": 1}).id
        rows = {r["id"]: r for r in _one(
            store, "SELECT * FROM runs WHERE id IN (:a, :b)", {"a": published, "b": triggered})}
        differ = {k for k in rows[published] if rows[published][k] != rows[triggered][k]}
        assert differ == {"id", "metadata"}, differ
        assert rows[published]["max_duration"] == 90.5 and rows[published]["max_attempts"] == 7


def test_a_batch_triggers_runs_have_the_row_a_single_trigger_writes(
    store: Store, client: Client
) -> None:
    # SQLite writes a batch's plain runs in one statement (insert_lean_runs), a single
    # trigger's with insert_run: the rows are the same but for the id.
    store.publish_tasks("dev", [limited.definition()])
    batch = [h.id for h in client.batch_trigger(limited, [{"n": 1}, {"n": 1}])]
    single = client.trigger(limited, {"n": 1}).id
    rows = {r["id"]: r for r in _one(
        store, "SELECT * FROM runs WHERE id IN (:a, :b, :c)",
        {"a": batch[0], "b": batch[1], "c": single})}
    for run_id in batch:
        differ = {k for k in rows[run_id] if rows[run_id][k] != rows[single][k]}
        assert differ == {"id"}, differ
