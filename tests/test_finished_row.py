"""What a finished run's row keeps (issue 18, bytes per finished run), on both backends:
a run that finished on its first attempt drops ``segment_started_at`` (then started_at or
later, and read of a finished run only for the last attempt's start, which is started_at
for attempt 1), a retried run keeps it (its last attempt started then), and the run page's
attempts read the same either way. A completion's JSON null output is stored as NULL, and
reads as None as before; any other output is kept as it was. It also stores NULL for what
only a live run needs (ready_at) and for an available_at equal to created_at and a priority
or exec_seconds of 0 (migration 0025_finished_row_nulls), and every reader takes those
values back: a Run, a replay and the API read the same before and after the finish."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from outlast import Retry, task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import Run, RunStatus
from outlast.server.dashboard._timeline import attempts
from outlast.server.serialize import run_json
from outlast.store import _sql_schema, open_store
from outlast.store.base import Store
from tests.conftest import ROOT

TRIES: dict[str, int] = {}  # payload tag -> attempts still to fail
CLOCK: dict[str, FakeClock] = {}


@task(id="finished-row-noop")
async def noop(payload: Any) -> None:
    CLOCK["c"].advance(0.5)


@task(id="finished-row-flaky", retry=Retry(max_attempts=3, min_delay=2.0, max_delay=2.0,
                                           factor=1.0, jitter=False))
async def flaky(payload: dict[str, str]) -> str:
    CLOCK["c"].advance(0.5)
    if TRIES.get(payload["tag"], 0) > 0:
        TRIES[payload["tag"]] -= 1
        raise ConnectionError("503")
    return "ok"


async def test_a_first_attempt_finish_clears_segment_started_at(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    CLOCK["c"] = clock
    handles = [await noop.trigger({"i": i}) for i in range(3)]  # a batch of completions
    TRIES["dead"] = 5
    dead = await flaky.trigger({"tag": "dead"})
    worker = workers(noop, flaky, concurrency=4)
    await worker.run_until_idle()
    for _ in range(3):
        clock.advance(3.0)
        await worker.run_until_idle()
    for h in handles:
        run = client.retrieve(h.id)
        assert run.status == RunStatus.COMPLETED and run.attempt == 1
        assert run.segment_started_at is None
        assert run.started_at is not None and run.finished_at is not None
        assert run.active_seconds > 0
        (a,) = attempts(run, store.journal(run.id), store.events(run.id))
        assert a["start"] == run.started_at and a["end"] == run.finished_at
    with store._transaction() as tx:  # type: ignore[attr-defined]
        raw = {r["id"]: r["output"] for r in store._raw(  # type: ignore[attr-defined]
            tx, "SELECT id, output FROM runs", {})}
    assert all(raw[h.id] is None for h in handles)  # None: NULL, not the text 'null'
    assert all(client.retrieve(h.id).output is None for h in handles)
    failed = client.retrieve(dead.id)
    assert failed.status == RunStatus.FAILED and failed.attempt == 3
    assert failed.segment_started_at is not None  # its third attempt's start


async def test_a_retried_run_keeps_its_last_attempts_start(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    CLOCK["c"] = clock
    TRIES["once"] = 1
    handle = await flaky.trigger({"tag": "once"})
    worker = workers(flaky)
    await worker.run_until_idle()
    clock.advance(3.0)
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED and run.attempt == 2 and run.output == "ok"
    assert run.segment_started_at is not None and run.started_at is not None
    assert run.segment_started_at > run.started_at
    first, second = attempts(run, store.journal(run.id), store.events(run.id))
    assert first["outcome"] == "failed"
    # The second attempt began when it was claimed after the backoff, not when the
    # first one failed: that is what segment_started_at still says.
    assert second["start"] == run.segment_started_at > first["end"]


# What a claim, a start and a finish change; every other field of a Run must read the same
# once the run has finished, whatever its row now stores.
CHANGED_BY_RUNNING = {"status", "updated_at", "started_at", "finished_at", "worker_id",
                      "lease_epoch", "segment_started_at", "version", "active_seconds",
                      "queued_seconds", "output", "error"}
LIVE_ONLY = ("available_at", "ready_at", "priority", "exec_seconds")


def _unchanged(before: Run, after: Run) -> None:
    for f in dataclasses.fields(Run):
        if f.name not in CHANGED_BY_RUNNING:
            assert getattr(after, f.name) == getattr(before, f.name), f.name


def _raw_rows(store: Store, ids: list[str]) -> dict[str, dict[str, Any]]:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        rows = store._raw(tx, "SELECT * FROM runs", {})  # type: ignore[attr-defined]
    return {r["id"]: r for r in rows if r["id"] in ids}


async def test_a_finished_row_drops_live_values_and_reads_back_the_same(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    CLOCK["c"] = clock
    plain = await noop.trigger({"i": 1})
    ranked = await noop.trigger({"i": 2}, priority=5.0, delay=10.0)
    idle = await noop.trigger({"i": 3}, priority=2.0)
    before = {h.id: client.retrieve(h.id) for h in (plain, ranked, idle)}
    assert before[plain.id].available_at == before[plain.id].created_at
    assert before[ranked.id].available_at == before[ranked.id].created_at + 10.0
    client.cancel(idle.id)  # cancel_idle finishes a run that never started
    worker = workers(noop)
    await worker.run_until_idle()
    clock.advance(11.0)
    await worker.run_until_idle()

    after = {h.id: client.retrieve(h.id) for h in (plain, ranked, idle)}
    assert after[plain.id].status == after[ranked.id].status == RunStatus.COMPLETED
    assert after[idle.id].status == RunStatus.CANCELED
    for run_id, run in after.items():
        _unchanged(before[run_id], run)
        assert isinstance(run.priority, float) and isinstance(run.exec_seconds, float)
        assert run_json(run)["priority"] == before[run_id].priority
    assert after[plain.id].priority == 0.0 and after[ranked.id].priority == 5.0

    raw = _raw_rows(store, list(after))
    # The plain run keeps none of the four; the others keep what differs from the default.
    assert all(raw[plain.id][c] is None for c in LIVE_ONLY)
    assert raw[ranked.id]["available_at"] == before[ranked.id].available_at
    assert raw[ranked.id]["priority"] == 5.0 and raw[idle.id]["priority"] == 2.0
    assert raw[idle.id]["available_at"] is None
    for run_id in (ranked.id, idle.id):
        assert raw[run_id]["ready_at"] is None and raw[run_id]["exec_seconds"] is None

    # A replay of a finished run takes the original's values, as it did from a live row.
    again = client.replay(ranked.id)
    replayed = client.retrieve(again.id)
    assert replayed.priority == 5.0 and replayed.status == RunStatus.QUEUED
    raw_again = _raw_rows(store, [again.id])[again.id]
    assert raw_again["ready_at"] == raw_again["available_at"] - 5.0


ROW_SIZES = """
    SELECT pg_column_size(r) AS stored,
           pg_column_size(jsonb_populate_record(r, jsonb_build_object(
               'available_at', r.created_at, 'ready_at', r.created_at,
               'priority', 0, 'exec_seconds', 0))) AS filled
    FROM runs r WHERE id = :id"""


async def test_a_finished_no_op_row_is_32_bytes_narrower_on_postgres(
    store: Store, client: Client, clock: FakeClock, workers: Any, backend: str
) -> None:
    """pg_column_size of the finished row against the same row with the four values
    filled in (jsonb_populate_record over it): the 32 bytes that take a bench no-op row
    from 265 to 233 bytes, 29 to 33 rows a heap page (bench/README.md, History)."""
    if backend != "postgres":
        return
    CLOCK["c"] = clock
    handle = await noop.trigger({"i": 1})
    await workers(noop).run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.COMPLETED
    with store._transaction() as tx:  # type: ignore[attr-defined]
        (row,) = store._raw(tx, ROW_SIZES, {"id": handle.id})  # type: ignore[attr-defined]
    assert row["filled"] - row["stored"] == 32


def test_sqlite_connections_open_across_the_migration_see_the_columns_nullable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's migration edits the table's text in sqlite_master (it has no ALTER
    COLUMN); a connection that read the schema before it, as another process's would have,
    must re-read it, or its finish statements would still fail NOT NULL."""
    path = tmp_path / "v1.db"
    v1 = (ROOT / "tests" / "fixtures" / "schema_v1.sqlite.sql").read_text()
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(v1 + "\nINSERT INTO outlast_schema (version) VALUES (1);")
    every = _sql_schema.migration_files
    for upto in (24, 25):  # the old connection reads the schema as migration 0024 left it
        monkeypatch.setattr(_sql_schema, "migration_files",
                            lambda d, upto=upto: [m for m in every(d) if m.number <= upto])
        store = open_store(f"sqlite:///{path}")
        try:
            store.migrate()
        finally:
            store.close()
        if upto == 24:
            old.execute("INSERT INTO runs (id, env, task_id, queue, status, payload, "
                        "max_attempts, created_at, updated_at, available_at, ready_at) "
                        "VALUES ('run_v1', 'dev', 't', 'q', 'QUEUED', '{}', 3, 1, 1, 1, 1)")
    old.execute("UPDATE runs SET available_at = NULL, ready_at = NULL, priority = NULL, "
                "exec_seconds = NULL WHERE id = 'run_v1'")
    assert old.execute("SELECT ready_at FROM runs").fetchall() == [(None,)]
    assert old.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    notnull = {r[1]: r[3] for r in old.execute("PRAGMA table_info(runs)")}
    assert [notnull[c] for c in LIVE_ONLY] == [0, 0, 0, 0]
    old.close()
