"""Expand-then-contract upgrades, in-process on real SQLite and PostgreSQL.

A process runs on a schema ahead of it by expand migrations only (an older release keeps
working while a newer one migrates), and refuses one that a contract migration took past
it. A contract migration waits while a live process predates it: `outlast migrate` stops
before it, `--contract` refuses and names the processes, and it applies once they are gone.
Live processes record their release, so `outlast migrate --check` lists them.

The upgrade across real releases (an older commit's worker in its own venv) is
tests/test_upgrade_release.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from outlast import cli
from outlast._clock import FakeClock
from outlast._errors import SchemaVersionError
from outlast._presence import announce
from outlast.store import Store, _sql_schema, open_store
from outlast.store._schema_base import CONTRACT, ContractBlocked, Migration, migration_files
from outlast.store._sql import SCHEMA_VERSION
from outlast.store.base import WorkerInfo
from tests.test_migrations import raw


def _worker(store: Store, wid: str) -> None:
    store.register_worker(WorkerInfo(id=wid, env="dev", host="h", pid=1, concurrency=1,
                                     tasks=["t"], lease_seconds=30.0))


def test_an_older_release_runs_on_a_schema_ahead_of_it_by_expand_migrations_only(
    db_url: str,
) -> None:
    """A newer release applied a migration this code does not know: an expand one is
    fine, a contract one (or one left unrecorded) is refused with what to do."""
    store = open_store(db_url)
    try:
        newer = SCHEMA_VERSION + 1
        raw(db_url, f"UPDATE outlast_schema SET version = {newer}")
        raw(db_url, "INSERT INTO outlast_migrations (name, number, kind, applied_at, release) "
                    f"VALUES ('added_a_column', {newer}, 'expand', 0, '9.9')")
        store.check_schema()  # runs: the newer release only added
        status = store.schema_status()
        assert status.runnable and status.unknown == {"added_a_column": "expand"}
        # An older release's `migrate` (a one-shot container restarting) changes nothing.
        assert store.migrate() == newer
        assert raw(db_url, "SELECT version FROM outlast_schema") == [(newer,)]

        raw(db_url, f"UPDATE outlast_schema SET version = {newer + 1}")
        raw(db_url, "INSERT INTO outlast_migrations (name, number, kind, applied_at, release) "
                    f"VALUES ('dropped_a_column', {newer + 1}, 'contract', 0, '9.9')")
        with pytest.raises(SchemaVersionError) as info:
            store.check_schema()
        assert "dropped_a_column (contract)" in str(info.value)
        assert "upgrade outlast" in str(info.value)
    finally:
        store.close()


def test_a_contract_migration_waits_for_live_processes_of_the_older_release(
    store: Store, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dialect = "sqlite" if store.url.startswith("sqlite") else "postgres"
    raw(store.url, "CREATE TABLE legacy_thing (id TEXT)")
    _worker(store, "w_old")  # registered by this (older) code
    drop = Migration(SCHEMA_VERSION + 1, "drop_legacy_thing", CONTRACT,
                     "-- outlast: contract\nDROP TABLE legacy_thing;\n")
    files = [*migration_files(dialect), drop]
    monkeypatch.setattr(_sql_schema, "migration_files", lambda d: files)
    monkeypatch.setattr(_sql_schema, "_code_version", lambda: SCHEMA_VERSION + 1)
    _worker(store, "w_new")  # registered by the next release's code

    # The new release runs before its contract step: only a contract migration is missing.
    store.check_schema()
    status = store.schema_status()
    assert [m.name for m in status.pending] == ["drop_legacy_thing"]
    assert [p.id for p in status.blockers(drop)] == ["w_old"]
    assert store.migrate() == SCHEMA_VERSION  # stops before the contract step
    with pytest.raises(ContractBlocked) as info:
        store.migrate(contract=True)
    assert "w_old" in info.value.message and "w_new" not in info.value.message
    assert raw(store.url, "SELECT COUNT(*) FROM legacy_thing") == [(0,)]  # still there

    # The CLI says the same: --check lists both processes by release; --contract exits 3.
    url = store.url
    assert cli.main(["migrate", "--check", "--database-url", url]) == 1
    out = capsys.readouterr().out
    assert "drop_legacy_thing" in out and "waits for 1 older processes" in out
    assert f"schema {SCHEMA_VERSION}" in out and f"schema {SCHEMA_VERSION + 1}" in out
    assert cli.main(["migrate", "--contract", "--database-url", url]) == 3
    assert "w_old" in capsys.readouterr().err

    # The old worker goes (its lease lapses on the database clock): the contract applies.
    store.stop_worker("w_old")
    assert store.migrate(contract=True) == SCHEMA_VERSION + 1
    store.check_schema()
    assert cli.main(["migrate", "--check", "--json", "--database-url", url]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["pending"] == [] and [p["id"] for p in checked["processes"]] == ["w_new"]

    # And now the older release refuses to start on it: a contract migration took its past.
    monkeypatch.undo()
    with pytest.raises(SchemaVersionError, match="drop_legacy_thing"):
        store.check_schema()


def test_a_live_worker_of_a_release_that_registers_nothing_holds_back_contracts(
    store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker from before processes were recorded has no release on file: unknown,
    so it counts as older."""
    _worker(store, "w_legacy")
    raw(store.url, "DELETE FROM processes WHERE id = 'w_legacy'")
    dialect = "sqlite" if store.url.startswith("sqlite") else "postgres"
    drop = Migration(SCHEMA_VERSION + 1, "drop_nothing", CONTRACT, "SELECT 1;\n")
    monkeypatch.setattr(_sql_schema, "migration_files",
                        lambda d: [*migration_files(dialect), drop])
    status = store.schema_status()
    assert [(p.id, p.release) for p in status.blockers(drop)] == [("w_legacy", "unknown")]


def test_migration_kinds_come_from_the_files_and_default_to_expand() -> None:
    for dialect in ("sqlite", "postgres"):
        files = migration_files(dialect)
        assert {m.name for m in files} >= {"dequeued", "dashboard_sessions",
                                           "expand_contract"}
        assert all(m.kind in ("expand", "contract") for m in files)
        assert next(m for m in files if m.name == "expand_contract").kind == "expand"


async def test_a_server_registers_its_release_while_it_runs(store: Store) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(announce(store, "server", "prod", stop, every=0.01))
    deadline = time.monotonic() + 30  # by the clock, not a count of polls: CI is loaded
    while True:
        live = [p for p in store.schema_status().processes if p.kind == "server"]
        if live or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert len(live) == 1 and live[0].env == "prod"
    assert live[0].schema_version == SCHEMA_VERSION
    assert live[0].knows("expand_contract")
    stop.set()
    await task
    assert [p for p in store.schema_status().processes if p.kind == "server"] == []



def test_process_rows_of_processes_gone_a_week_are_pruned_live_workers_kept(
    store: Store, clock: FakeClock,
) -> None:
    _worker(store, "w_long_lived")
    store.register_process("server_gone", "server", "dev")
    store.stop_process("server_gone")
    clock.advance(8 * 86400)
    store.heartbeat("w_long_lived", 30.0)
    store.register_process("server_new", "server", "dev")
    ids = {r[0] for r in raw(store.url, "SELECT id FROM processes")}
    assert ids == {"w_long_lived", "server_new"}


def test_a_migration_that_loses_a_deadlock_is_tried_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live workers of the previous release hold row locks while the migration's DDL
    takes table locks: PostgreSQL may abort the migration as a deadlock's victim. Its
    transaction rolled back whole, so migrate tries it again instead of failing the deploy."""

    class Deadlock(Exception):
        sqlstate = "40P01"

    real = store._migrate_once  # type: ignore[attr-defined]
    calls: list[bool] = []

    def flaky(contract: bool) -> int:
        calls.append(contract)
        if len(calls) < 3:
            raise Deadlock("deadlock detected")
        return int(real(contract))

    monkeypatch.setattr(store, "_migrate_once", flaky)
    monkeypatch.setattr(_sql_schema.time, "sleep", lambda s: None)
    assert store.migrate() == SCHEMA_VERSION
    assert len(calls) == 3

    class Other(Exception):
        sqlstate = "42P01"  # undefined table: a real error, not a lost race

    def broken(contract: bool) -> int:
        raise Other("no such table")

    monkeypatch.setattr(store, "_migrate_once", broken)
    with pytest.raises(Other):
        store.migrate()
