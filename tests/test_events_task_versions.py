"""The subscriber fingerprint a publish checks its cached plan against (issue 20's
benchmark): on SQLite a counter per environment that triggers on the task rows bump
(0022_task_versions), not a hash of every row read on every publish.

- Any change to a task row is seen by the next publish, whoever writes it (another
  release's code, a hand-made UPDATE or DELETE), even at the same clock instant.
- A database migrated to 0022 has the triggers and counters a fresh one has.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from outlast import Retry, task
from outlast.client import Client
from outlast.store import open_store
from outlast.store.base import Store
from tests.conftest import ROOT


@task(id="tv-first", on=["tv.signup"])
async def first(payload: Any) -> None: ...


@task(id="tv-second", on=["tv.*"])
async def second(payload: Any) -> None: ...


def _sql(store: Store, sql: str) -> None:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        store._raw(tx, sql, {})  # type: ignore[attr-defined]


def _tasks_of(client: Client, run_ids: list[str]) -> list[str]:
    return sorted(client.retrieve(r).task_id for r in run_ids)


def test_a_task_row_changed_or_deleted_by_hand_is_seen_by_the_next_publish(
    store: Store, client: Client
) -> None:
    store.publish_tasks("dev", [first.definition(), second.definition()])
    assert _tasks_of(client, client.publish("tv.signup", {}).run_ids) == [first.id, second.id]
    assert len(client.publish("tv.signup", {}).run_ids) == 2  # planned from the cache
    # The subscription changed in place, updated_at untouched (the clock has not moved).
    _sql(store, "UPDATE tasks SET spec = replace(spec, 'tv.signup', 'tv.other') "
                "WHERE id = 'tv-first'")
    assert _tasks_of(client, client.publish("tv.signup", {}).run_ids) == [second.id]
    assert _tasks_of(client, client.publish("tv.other", {}).run_ids) == [first.id, second.id]
    _sql(store, "DELETE FROM tasks WHERE id = 'tv-second'")
    assert client.publish("tv.signup", {}).run_ids == []
    assert _tasks_of(client, client.publish("tv.other", {}).run_ids) == [first.id]


def test_the_counter_moves_only_for_the_environment_whose_tasks_changed(tmp_path: Path
                                                                         ) -> None:
    store = open_store(f"sqlite:///{tmp_path}/tv.db")
    try:
        store.migrate()
        store.publish_tasks("dev", [first.definition()])
        store.publish_tasks("prod", [first.definition()])
        before = _versions(store)
        store.publish_tasks("dev", [first.definition(), second.definition()])
        after = _versions(store)
        assert after["prod"] == before["prod"]
        assert after["dev"] > before["dev"]
        # A write to a column the fingerprint does not cover moves nothing: there is none
        # today, so check the trigger names its columns rather than firing on any UPDATE.
        sql = _one_sql(store, "SELECT sql FROM sqlite_master WHERE name = "
                              "'tasks_version_update'")
        assert "UPDATE OF env, id, queue, payload_schema, spec, updated_at" in sql
    finally:
        store.close()


def _versions(store: Store) -> dict[str, int]:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        rows = store._raw(tx, "SELECT env, version FROM task_versions", {})  # type: ignore[attr-defined]
        return {r["env"]: int(r["version"]) for r in rows}


def _one_sql(store: Store, sql: str) -> str:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        return str(next(iter(store._raw(tx, sql, {})))["sql"])  # type: ignore[attr-defined]


def _triggers(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        return {name: " ".join(str(sql).split()) for name, sql in rows}
    finally:
        conn.close()


def test_a_migrated_sqlite_database_counts_its_tasks_as_a_fresh_one_does(tmp_path: Path
                                                                         ) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript((ROOT / "tests" / "fixtures" / "schema_v1.sqlite.sql").read_text()
                       + "\nINSERT INTO outlast_schema (version) VALUES (1);"
                       "\nINSERT INTO tasks (env, id, queue, payload_schema, spec, updated_at)"
                       " VALUES ('dev', 'tv-old', 'default', '{}', '{}', 1);")
    conn.close()
    store = open_store(f"sqlite:///{old}")
    try:
        store.migrate()
        assert _versions(store) == {"dev": 1}  # seeded for the tasks already there
        store.publish_tasks("dev", [first.definition()])
        assert _versions(store)["dev"] > 1
    finally:
        store.close()
    fresh = tmp_path / "fresh.db"
    other = open_store(f"sqlite:///{fresh}")
    other.migrate()
    other.close()
    assert _triggers(old) == _triggers(fresh)
    assert set(_triggers(fresh)) == {"tasks_version_insert", "tasks_version_update",
                                     "tasks_version_delete"}


@task(id="tv-limited", on=["tv.limited"], queue="tv-q", max_duration=90.5,
      retry=Retry(max_attempts=7))
async def limited(payload: Any) -> None: ...


def test_a_fan_out_of_few_runs_and_of_many_writes_the_rows_a_trigger_writes(
    store: Store, client: Client
) -> None:
    # SQLite binds a few lean runs one by one (insert_lean_run), more go as JSON rows
    # (insert_lean_runs): either way every column but id and metadata is insert_run's.
    store.publish_tasks("dev", [limited.definition()])
    few = [r.run_ids[0] for r in client.publish_many(
        [{"name": "tv.limited", "data": {"n": 1}}] * 2)]
    many = [r.run_ids[0] for r in client.publish_many(
        [{"name": "tv.limited", "data": {"n": 1}}] * 9)]
    alone = client.publish("tv.limited", {"n": 1}).run_ids
    triggered = client.trigger(limited, {"n": 1}).id
    with store._transaction() as tx:  # type: ignore[attr-defined]
        rows = {r["id"]: r for r in store._raw(tx, "SELECT * FROM runs", {})}  # type: ignore[attr-defined]
    for run_id in few + many + alone:
        differ = {k for k in rows[run_id] if rows[run_id][k] != rows[triggered][k]}
        assert differ == {"id", "metadata"}, differ
    assert rows[triggered]["max_duration"] == 90.5 and rows[triggered]["max_attempts"] == 7
