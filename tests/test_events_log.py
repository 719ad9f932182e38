"""The events table without events_env_id and, on SQLite, without AUTOINCREMENT
(migrations 0026_events_released and 0027_events_lean): an event is still found by id
whichever of its rows deduplicates, a sequence number is never handed out twice, and a
database migrated from the earlier table keeps its events and its high-water mark."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from outlast import task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.store import open_store
from outlast.store._rows import load_queries
from outlast.store.base import Store
from tests.test_migrations import raw


@task(id="evlog-welcome", on=["log.signup"])
async def welcome(payload: dict[str, Any]) -> None:
    return None


def _seqs(db_url: str) -> list[int]:
    return [int(r[0]) for r in raw(db_url, "SELECT seq FROM events ORDER BY seq")]


def test_an_event_is_found_by_id_before_and_after_its_id_is_released(
    store: Store, client: Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [welcome.definition()])
    monkeypatch.setenv("OUTLAST_EVENT_DEDUP_SECONDS", "10")
    monkeypatch.setenv("OUTLAST_EVENT_RETENTION_SECONDS", "1000")
    client.publish("log.signup", {"n": 1}, id="again")
    found = store.get_event("dev", "again")
    assert found is not None and found.data == {"n": 1}  # deduplicating: events_dedup
    clock.advance(11)
    monkeypatch.setenv("OUTLAST_EVENT_RETENTION_SECONDS", "50")
    client.publish("log.signup", {"n": 2}, id="again")  # releases the first row
    found = store.get_event("dev", "again")
    assert found is not None and found.data == {"n": 2}  # the newer, deduplicating
    clock.advance(51)
    assert store.prune_events() == 1  # the newer row's retention was the shorter
    found = store.get_event("dev", "again")
    assert found is not None and found.data == {"n": 1}  # released: events_released
    assert store.get_event("other-env", "again") is None


def test_a_lookup_by_id_reads_only_the_ids_index_entries(tmp_path: Path) -> None:
    """SQLite's plan for ev_get: each arm an index search, no scan of the log."""
    conn = sqlite3.connect(tmp_path / "plan.db")
    conn.executescript((Path(__file__).parents[1] / "outlast" / "store" / "sql" /
                        "schema.sqlite.sql").read_text())
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + load_queries("sqlite")["ev_get"],
                                       {"env": "e", "id": "x"})]
    conn.close()
    assert any("USING INDEX events_dedup" in p for p in plan), plan
    assert any("USING INDEX events_released" in p for p in plan), plan
    assert not any(p.startswith("SCAN events") for p in plan), plan


def test_pruning_the_whole_log_never_hands_a_sequence_number_out_again(
    db_url: str, store: Store, client: Client, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_tasks("dev", [welcome.definition()])
    monkeypatch.setenv("OUTLAST_EVENT_DEDUP_SECONDS", "10")
    monkeypatch.setenv("OUTLAST_EVENT_RETENTION_SECONDS", "100")
    for i in range(3):
        client.publish("log.signup", {"n": i}, id=f"e{i}")
    highest = max(_seqs(db_url))
    clock.advance(101)
    assert store.prune_events() == 3
    assert client.list_events() == []
    assert store.get_event("dev", "e2") is None
    assert store.prune_events() == 0  # a kept tombstone is not pruned twice
    client.publish("log.signup", {"n": 9}, id="e9")
    [event] = client.list_events()
    assert event["id"] == "e9"
    new = store.get_event("dev", "e9")
    assert new is not None and new.seq > highest  # not handed out again
    clock.advance(101)
    assert store.prune_events() == 1
    assert len(_seqs(db_url)) <= 1  # at most the newest, emptied: the log does not grow


def test_a_sqlite_log_from_before_keeps_its_events_and_its_high_water_mark(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The events table as 0009 made it (AUTOINCREMENT, events_env_id), its newest events
    pruned by an earlier release, then 0027_events_lean: the rows are kept and the next
    event's seq is past every seq that release handed out."""
    url = f"sqlite:///{tmp_path}/before.db"
    store = open_store(url, clock)
    store.migrate()
    store.publish_tasks("dev", [welcome.definition()])
    client = Client(store=store, env="dev")
    store.close()
    path = tmp_path / "before.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "DROP TABLE events;"
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL,"
        " id TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, created_at REAL NOT NULL,"
        " dedup_until REAL NOT NULL, dedup_active INTEGER NOT NULL DEFAULT 1,"
        " expires_at REAL NOT NULL, fanout TEXT);"
        "CREATE UNIQUE INDEX events_dedup ON events (env, id) WHERE dedup_active = 1;"
        "CREATE INDEX events_env_seq ON events (env, seq);"
        "CREATE INDEX events_env_name ON events (env, name, seq);"
        "CREATE INDEX events_env_id ON events (env, id, seq);"
        "CREATE INDEX events_expiry ON events (expires_at);"
        "INSERT INTO events (env, id, name, data, created_at, dedup_until, expires_at)"
        " VALUES ('dev', 'kept', 'log.signup', '{\"n\": 1}', 1, 9e9, 9e9),"
        "        ('dev', 'gone', 'log.signup', '{\"n\": 2}', 1, 9e9, 9e9);"
        "DELETE FROM events WHERE id = 'gone';"  # the earlier pruner took the newest row
        "DELETE FROM outlast_migrations WHERE name = 'events_lean';"
        "UPDATE outlast_schema SET version = 26;"
    )
    conn.close()
    store = open_store(url, clock)
    try:
        store.migrate()
        client = Client(store=store, env="dev")
        kept = store.get_event("dev", "kept")
        assert kept is not None and kept.data == {"n": 1}
        client.publish("log.signup", {"n": 3}, id="new")
        new = store.get_event("dev", "new")
        assert new is not None and new.seq == 3  # not 2: "gone" had it
        assert [e["id"] for e in client.list_events()] == ["new", "kept"]
        conn = sqlite3.connect(path)
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE "
                                            "tbl_name = 'events' AND type = 'index'")}
        conn.close()
        assert "AUTOINCREMENT" not in sql
        assert "events_env_id" not in names and "events_released" in names
    finally:
        store.close()
