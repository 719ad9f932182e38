"""SQLite's plain batch publish (``_sql_events_sqlite._publish_plain``) writes what the
general path writes, and leaves a batch it cannot take to it having written nothing.

A batch whose subscribers all take its events as they are is written as rows (no record,
run or fan-out objects per event; the events in multi-row INSERTs): its event rows, fan-
outs and runs must be those of the general path, a failure after its events are written
must roll them back with the runs (atomic fan-out), and an id still deduplicating must
leave no trace of the attempt.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from outlast import CancelOn, task
from outlast.client import Client
from outlast.store import _sql_events_sqlite
from outlast.store.base import Store


@task(id="plain-first", on=["plain.signup"])
async def first(payload: Any) -> None: ...


@task(id="plain-second", on=["plain.*"], queue="plain-q")
async def second(payload: Any) -> None: ...


@task(id="plain-closable", cancel_on=[CancelOn("plain.closed", match="data.id")])
async def closable(payload: Any) -> None: ...


SUBSCRIBERS = (first, second, closable)


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        return [dict(r) for r in store._raw(tx, sql, {})]  # type: ignore[attr-defined]


def _batch(ids: list[str], name: str = "plain.signup") -> list[dict[str, Any]]:
    return [{"name": name, "data": {"id": i, "s": 'q"{}'}, "id": i} for i in ids]


def _plain_calls(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each batch took the plain path (True) or was left to the general one."""
    calls: list[bool] = []
    inner = store._publish_plain  # type: ignore[attr-defined]

    def counted(*args: Any) -> Any:
        done = inner(*args)
        calls.append(done is not None)
        return done

    monkeypatch.setattr(store, "_publish_plain", counted)
    return calls


def _written(store: Store) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Event rows and run rows, with ids replaced by their order (the general path and
    the plain one draw different run ids and sequence numbers)."""
    runs = _rows(store, "SELECT * FROM runs ORDER BY json_extract(metadata, '$.event.id'),"
                        " task_id")
    order = {r["id"]: f"run{i}" for i, r in enumerate(runs)}
    for r in runs:
        r["id"] = order[r["id"]]
    events = _rows(store, "SELECT * FROM events ORDER BY seq")
    for e in events:
        e.pop("seq")
        e["fanout"] = [[t, order[run], o, why] for t, run, o, why in json.loads(e["fanout"])]
    return events, runs


@pytest.mark.parametrize("backend", ["sqlite"])  # the plain batch is SQLite's
def test_a_plain_batch_writes_the_rows_the_general_path_writes(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])
    calls = _plain_calls(store, monkeypatch)
    ids = [f"p{i}" for i in range(300)]  # and l1: 128 + 128 + 32 + 8 + 4 + 1 a statement
    plain = client.publish_many(_batch(ids) + _batch(["l1"], name="plain.login"))
    assert calls == [True]
    assert [len(r.run_ids) for r in plain] == [2] * 300 + [1]
    written = _written(store)
    _rows(store, "DELETE FROM events")
    _rows(store, "DELETE FROM runs")
    monkeypatch.setattr(store, "_publish_plain", lambda *args: None)
    general = client.publish_many(_batch(ids) + _batch(["l1"], name="plain.login"))
    assert [len(r.run_ids) for r in general] == [2] * 300 + [1]
    assert _written(store) == written
    assert written[0][0]["fanout"][0][0] == "plain-first"  # subscribers in their order


@pytest.mark.parametrize("backend", ["sqlite"])  # the plain batch is SQLite's
def test_a_plain_batch_that_fails_after_its_events_rolls_them_back(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])

    def broken(*args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(_sql_events_sqlite, "insert_lean_rows", broken)
    monkeypatch.setattr(_sql_events_sqlite, "insert_lean", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        client.publish_many(_batch(["a", "b", "c"]))
    assert _rows(store, "SELECT COUNT(*) AS n FROM events")[0]["n"] == 0
    assert _rows(store, "SELECT COUNT(*) AS n FROM runs")[0]["n"] == 0
    monkeypatch.undo()
    results = client.publish_many(_batch(["a", "b", "c"]))  # nothing held the ids
    assert [r.duplicate for r in results] == [False] * 3


def test_a_batch_with_a_taken_id_leaves_no_trace_of_the_plain_attempt(
    store: Store, client: Client, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])
    taken = client.publish_many(_batch(["t1", "t2"]))
    calls = _plain_calls(store, monkeypatch) if backend == "sqlite" else []
    results = client.publish_many(_batch(["n1", "t1", "n2", "t2", "n3"]))
    if backend == "sqlite":
        assert calls == [False]  # its events' insert met t1: rolled back, the general path
    assert [r.duplicate for r in results] == [False, True, False, True, False]
    assert results[1].run_ids == taken[0].run_ids
    assert _rows(store, "SELECT COUNT(*) AS n FROM runs")[0]["n"] == 2 * 5
    assert [r["id"] for r in _rows(store, "SELECT id FROM events ORDER BY seq")] == [
        "t1", "t2", "n1", "n2", "n3"]


def test_a_batch_a_subscriber_cancels_on_is_left_to_the_general_path(
    store: Store, client: Client, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [t.definition() for t in SUBSCRIBERS])
    run = client.trigger(closable, {"id": "c2"})
    calls = _plain_calls(store, monkeypatch) if backend == "sqlite" else []
    results = client.publish_many(_batch(["c1", "c2"], name="plain.closed"))
    if backend == "sqlite":
        assert calls == [False]  # nothing written by it: the cancel is decided per event
    assert [len(r.run_ids) for r in results] == [1, 1]  # plain-second's (plain.*)
    assert client.retrieve(run.id).status.value == "CANCELED"
