"""Schema versions and migrations, on real SQLite and real PostgreSQL.

A fresh database migrates to the current version and migrating again changes nothing; a
database made by version 1 migrates to the same schema, its runs kept; a process
facing a schema it does not know refuses to start and says what to run; the two dialects'
schema files define the same tables, columns and indexes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outlast import Worker, task
from outlast._errors import SchemaVersionError
from outlast.client import Client
from outlast.store import open_store
from outlast.store._sql import SCHEMA_VERSION, migrations
from tests.conftest import ROOT, _admin, _pg_url, drop_pg_database

Schema = dict[str, Any]


@task(id="eng-mig-keep")
async def keep(payload: dict[str, Any]) -> None:
    return None


def raw(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run SQL outside outlast, on a connection of its own."""
    if db_url.startswith("sqlite:"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(sql).fetchall()
            conn.commit()
        finally:
            conn.close()
        return rows
    with psycopg.connect(db_url, autocommit=True) as pg:
        cur = pg.execute(sql.encode())
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


def new_empty_pg_database() -> str:
    name = f"outlast_t_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of the current backend with nothing in it."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    name = new_empty_pg_database()
    try:
        yield _pg_url(name)
    finally:
        drop_pg_database(name)


def test_fresh_database_is_refused_until_migrated_then_reports_the_version(
    empty_url: str,
) -> None:
    store = open_store(empty_url)
    try:
        with pytest.raises(SchemaVersionError) as info:
            store.check_schema()
        assert "no outlast schema" in str(info.value)
        assert "outlast migrate" in str(info.value)
        with pytest.raises(SchemaVersionError):
            Client(store=store, env="dev").list_runs()  # an app refuses too

        assert store.migrate() == SCHEMA_VERSION
        assert raw(empty_url, "SELECT version FROM outlast_schema") == [(SCHEMA_VERSION,)]
        store.check_schema()
        assert Client(store=store, env="dev").list_runs() == []
    finally:
        store.close()


def test_migrate_is_idempotent(db_url: str) -> None:
    store = open_store(db_url)
    try:
        run_id = Client(store=store, env="dev").trigger(keep, {"x": 1}).id
        before = schema_of(db_url)
        assert store.migrate() == SCHEMA_VERSION
        assert store.migrate() == SCHEMA_VERSION
        assert schema_of(db_url) == before
        assert raw(db_url, "SELECT version FROM outlast_schema") == [(SCHEMA_VERSION,)]
        run = Client(store=store, env="dev").retrieve(run_id)  # data untouched
        assert run.payload == {"x": 1}
    finally:
        store.close()


def test_concurrent_migrations_of_an_empty_database_agree(empty_url: str) -> None:
    n = 4
    stores = [open_store(empty_url) for _ in range(n)]
    barrier = threading.Barrier(n)
    versions: list[int] = []
    errors: list[BaseException] = []

    def migrate(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            versions.append(stores[i].migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in stores:
            s.close()
    assert errors == []
    assert versions == [SCHEMA_VERSION] * n
    assert raw(empty_url, "SELECT version FROM outlast_schema") == [(SCHEMA_VERSION,)]


def _outlast(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outlast", *args, "--database-url", db_url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,  # a worker that started anyway would run until this kills it
    )


async def test_a_newer_schema_version_is_refused_with_what_to_do(db_url: str) -> None:
    newer = SCHEMA_VERSION + 1
    raw(db_url, f"UPDATE outlast_schema SET version = {newer}")
    store = open_store(db_url)
    try:
        with pytest.raises(SchemaVersionError) as info:
            store.check_schema()
        message = str(info.value)
        assert f"schema version {newer}" in message
        assert "upgrade outlast" in message  # migrating cannot help: the code is behind
        assert info.value.code == "schema_version"

        with pytest.raises(SchemaVersionError, match="newer than this outlast"):
            store.migrate()  # never downgrades, never touches a schema it does not know
        assert raw(db_url, "SELECT version FROM outlast_schema") == [(newer,)]

        with pytest.raises(SchemaVersionError):
            Client(store=store, env="dev").list_runs()
        worker = Worker(store, tasks={keep.id: keep}, env="dev")
        with pytest.raises(SchemaVersionError):
            await worker.run_until_idle()
        assert store.list_workers() == []  # it never registered
    finally:
        store.close()

    # The real processes: both exit with the error, neither starts.
    started = _outlast(db_url, "worker", "--app", "tests.apps.engine_app", "--env", "dev")
    assert started.returncode == 2, started.stderr
    assert "error [schema_version]" in started.stderr
    assert "upgrade outlast" in started.stderr
    migrated = _outlast(db_url, "migrate")
    assert migrated.returncode == 2, migrated.stderr
    assert "newer than this outlast" in migrated.stderr
    assert raw(db_url, "SELECT version FROM outlast_schema") == [(newer,)]


# -- the two dialects define one schema -----------------------------------------------------

_FAMILY = {
    "TEXT": "text",
    "INTEGER": "integer",
    "REAL": "real",
    "text": "text",
    "integer": "integer",
    "bigint": "integer",
    "double precision": "real",
}


def schema_of(db_url: str) -> Schema:
    """Tables -> columns (name, type family, not null, primary key) and indexes -> columns."""
    tables: dict[str, list[tuple[str, str, bool, bool]]] = {}
    indexes: dict[str, tuple[str, bool, list[str]]] = {}
    if db_url.startswith("sqlite:"):
        names = [r[0] for r in raw(db_url, "SELECT name FROM sqlite_master WHERE type = 'table' "
                                           "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for t in names:
            tables[t] = [
                # SQLite lets a non-INTEGER primary key hold NULL; outlast never writes one.
                (name, _FAMILY[decl], bool(notnull) or bool(pk), bool(pk))
                for _, name, decl, notnull, _, pk in raw(db_url, f"PRAGMA table_info({t})")
            ]
            for _, name, unique, origin, _ in raw(db_url, f"PRAGMA index_list({t})"):
                if origin == "c":  # CREATE INDEX, not one implied by a constraint
                    cols = [r[2] for r in raw(db_url, f"PRAGMA index_info({name})")]
                    indexes[name] = (t, bool(unique), cols)
        return {"tables": tables, "indexes": indexes}
    pks = {
        (t, c)
        for t, c in raw(
            db_url,
            "SELECT k.table_name, k.column_name FROM information_schema.table_constraints c "
            "JOIN information_schema.key_column_usage k "
            "  ON k.constraint_name = c.constraint_name AND k.table_name = c.table_name "
            "WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = 'public'",
        )
    }
    for t, name, dtype, nullable in raw(
        db_url,
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    ):
        tables.setdefault(t, []).append((name, _FAMILY[dtype], nullable == "NO", (t, name) in pks))
    for name, t, unique, col in raw(
        db_url,
        # An expression column (attnum 0) comes out as None, as SQLite's index_info says.
        "SELECT i.relname, t.relname, x.indisunique, a.attname FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public' "
        "CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos) "
        "LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum "
        "AND k.attnum <> 0 "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid) "
        "ORDER BY i.relname, k.pos",
    ):
        indexes.setdefault(name, (t, bool(unique), []))[2].append(col)
    return {"tables": dict(sorted(tables.items())), "indexes": indexes}


def test_sqlite_and_postgres_schemas_define_the_same_tables_and_columns(tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path}/parity.db"
    pg_name = new_empty_pg_database()
    try:
        pg_url = _pg_url(pg_name)
        for url in (sqlite_url, pg_url):
            store = open_store(url)
            store.migrate()
            store.close()
        lite, pg = schema_of(sqlite_url), schema_of(pg_url)
    finally:
        drop_pg_database(pg_name)

    assert sorted(lite["tables"]) == sorted(pg["tables"])
    assert {"runs", "journal", "waitpoints", "queues", "workers"} <= set(lite["tables"])
    for table in lite["tables"]:
        assert lite["tables"][table] == pg["tables"][table], table
    assert lite["indexes"] == pg["indexes"]
    assert "runs_idempotency" in lite["indexes"]


def test_migration_files_pair_up_across_dialects() -> None:
    """Forward-only migrations after version 1: one per number in each dialect, no gaps."""
    lite = [n for n, _ in migrations("sqlite")]
    pg = [n for n, _ in migrations("postgres")]
    assert lite == pg
    assert lite == list(range(2, 2 + len(lite)))
    latest = lite[-1] if lite else 1
    assert latest == SCHEMA_VERSION


def _index_definitions(db_url: str) -> dict[str, str]:
    """Index name -> its full definition (columns and partial predicate), whitespace
    normalised, as the database reports it."""
    if db_url.startswith("sqlite:"):
        rows = raw(db_url, "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                           "AND sql IS NOT NULL")
    else:
        rows = raw(db_url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    return {name: " ".join(str(sql).split()) for name, sql in rows}


def test_a_version_1_database_migrates_to_the_current_schema_with_its_runs(
    empty_url: str, tmp_path: Path
) -> None:
    """Version 1 as it shipped (tests/fixtures/schema_v1.*.sql), with a run in it, then
    `migrate`: the same tables, columns and indexes (predicates too) as a fresh database."""
    dialect = "sqlite" if empty_url.startswith("sqlite:") else "postgres"
    v1 = (ROOT / "tests" / "fixtures" / f"schema_v1.{dialect}.sql").read_text()
    if dialect == "sqlite":
        conn = sqlite3.connect(empty_url.removeprefix("sqlite:///"))
        conn.executescript(v1 + "\nINSERT INTO outlast_schema (version) VALUES (1);")
        conn.close()
    else:
        raw(empty_url, v1 + "\nINSERT INTO outlast_schema (version) VALUES (1);")
    store = open_store(empty_url)
    try:
        with pytest.raises(SchemaVersionError, match="outlast migrate"):
            store.check_schema()
        raw(empty_url, "INSERT INTO runs (id, env, task_id, queue, status, payload, "
                       "max_attempts, created_at, updated_at, available_at, ready_at) VALUES "
                       "('run_v1', 'dev', 'eng-mig-keep', 'q', 'QUEUED', '{\"x\": 1}', 3, "
                       "1, 1, 1, 1)")
        assert store.migrate() == SCHEMA_VERSION
        store.check_schema()
        run = Client(store=store, env="dev").retrieve("run_v1")
        assert run.payload == {"x": 1}
    finally:
        store.close()

    fresh = f"sqlite:///{tmp_path}/fresh.db"
    pg_name = None
    if dialect == "postgres":
        pg_name = new_empty_pg_database()
        fresh = _pg_url(pg_name)
    try:
        other = open_store(fresh)
        other.migrate()
        other.close()
        assert schema_of(empty_url) == schema_of(fresh)
        assert _index_definitions(empty_url) == _index_definitions(fresh)
    finally:
        if pg_name is not None:
            drop_pg_database(pg_name)


def test_every_named_query_is_defined_once_per_dialect() -> None:
    """Two features once appended a query of the same name; the later block silently
    replaced the earlier, and one feature's statement ran with the other's parameters."""
    from outlast.store._rows import load_queries

    for dialect in ("sqlite", "postgres"):
        assert load_queries(dialect)  # raises on a name defined twice
