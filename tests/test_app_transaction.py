"""Triggering inside the application's own PostgreSQL transaction (``connection=``).

The run commits or rolls back with the app's own writes: after a rollback neither the
app's row nor the run exists; after the commit both do, and an idle worker, which would
otherwise not poll for 60 s, is woken by the NOTIFY that PostgreSQL delivers on commit.
On SQLite and over HTTP the option fails with a clear error and writes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.orm import Session

from outlast import step, task
from outlast._errors import ConfigurationError
from outlast.client import AsyncClient, Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.worker import Worker
from tests.conftest import _pg_url, drop_pg_database, new_pg_database


@task(id="apptx-ship")
async def ship(payload: dict[str, Any]) -> str:
    return str(await step.run("ship", lambda: f"shipped {payload['order']}"))


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = new_pg_database()
    url = _pg_url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def pg_client(pg_url: str) -> Iterator[Client]:
    client = Client(pg_url, env="dev")
    yield client
    client.close()


def orders(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]


def run_count(client: Client) -> int:
    return len(client.list_runs())


def test_a_rollback_leaves_neither_the_app_row_nor_the_run(pg_url: str, pg_client: Client
                                                            ) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO orders VALUES ('o1')")
        handle = pg_client.trigger(ship, {"order": "o1"}, connection=conn)
        # Not visible outside the transaction yet.
        assert run_count(pg_client) == 0
        conn.rollback()
    assert orders(pg_url) == []
    assert run_count(pg_client) == 0
    with pytest.raises(Exception, match="no run"):
        pg_client.retrieve(handle.id)


def test_an_exception_in_the_transaction_block_rolls_the_run_back(
    pg_url: str, pg_client: Client
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(RuntimeError), \
            conn.transaction():
            conn.execute("INSERT INTO orders VALUES ('o2')")
            pg_client.trigger(ship, {"order": "o2"}, connection=conn,
                              idempotency_key="order-o2", tags=["order:o2"])
            raise RuntimeError("the view failed after triggering")
    assert orders(pg_url) == [] and run_count(pg_client) == 0


async def test_a_commit_makes_the_run_visible_and_wakes_an_idle_worker(
    pg_url: str, pg_client: Client
) -> None:
    store = open_store(pg_url)
    worker = Worker(store, tasks={ship.id: ship}, env="dev", poll_interval=60.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        # Let it start, find nothing and wait on LISTEN (its listener connection exists).
        started = time.monotonic()
        while getattr(store, "_listener", None) is None:
            assert time.monotonic() - started < 30, "the worker never waited for work"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the LISTEN itself follows the connection
        with psycopg.connect(pg_url) as conn:
            conn.execute("INSERT INTO orders VALUES ('o3')")
            handle = pg_client.trigger(ship, {"order": "o3"}, connection=conn)
            await asyncio.sleep(0.5)
            assert worker.executed == 0  # uncommitted: no NOTIFY delivered, nothing claimed
            conn.commit()
        committed = time.monotonic()
        while not pg_client.retrieve(handle.id).is_final:
            assert time.monotonic() - committed < 5, "the commit's NOTIFY woke no worker"
            await asyncio.sleep(0.05)
        run = pg_client.retrieve(handle.id)
        assert run.status == RunStatus.COMPLETED and run.output == "shipped o3"
        assert orders(pg_url) == ["o3"]
    finally:
        stop.set()
        # Wake the worker's LISTEN (it would otherwise sit out its 60 s poll) to see the stop.
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('outlast_work', 'dev')")
        await running
        store.close()


def test_a_sqlalchemy_session_commits_and_rolls_back_with_the_run(
    pg_url: str, pg_client: Client
) -> None:
    engine = sqlalchemy.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with Session(engine) as session:
            session.execute(sqlalchemy.text("INSERT INTO orders VALUES ('s1')"))
            pg_client.trigger(ship, {"order": "s1"}, connection=session)
            session.rollback()
        assert orders(pg_url) == [] and run_count(pg_client) == 0
        with Session(engine) as session:
            session.execute(sqlalchemy.text("INSERT INTO orders VALUES ('s2')"))
            handle = pg_client.trigger(ship, {"order": "s2"}, connection=session)
            session.commit()
        assert orders(pg_url) == ["s2"]
        assert pg_client.retrieve(handle.id).status == RunStatus.QUEUED
    finally:
        engine.dispose()


def test_an_autocommit_connection_outside_a_transaction_is_refused(
    pg_url: str, pg_client: Client
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(
        ConfigurationError, match="autocommit mode with no transaction open"
    ):
        pg_client.trigger(ship, {"order": "x"}, connection=conn)
    assert run_count(pg_client) == 0


def test_sqlite_says_it_needs_postgresql(tmp_path: Path, pg_url: str) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    open_store(url).migrate()
    client = Client(url, env="dev")
    try:
        with psycopg.connect(pg_url) as conn, pytest.raises(
            ConfigurationError, match="needs PostgreSQL"
        ):
            client.trigger(ship, {"order": "x"}, connection=conn)
        assert client.list_runs() == []
    finally:
        client.close()


def test_an_http_client_says_it_needs_the_database(pg_url: str) -> None:
    client = Client(api_url="http://127.0.0.1:9", secret_key="sk_test")
    try:
        with psycopg.connect(pg_url) as conn, pytest.raises(
            ConfigurationError, match="not one over HTTP"
        ):
            client.trigger(ship, {"order": "x"}, connection=conn)
    finally:
        client.close()


async def test_the_async_client_passes_the_connection_through(pg_url: str, pg_client: Client
                                                              ) -> None:
    jobs = AsyncClient(pg_client)
    with psycopg.connect(pg_url) as conn:
        handle = await jobs.trigger(ship, {"order": "a1"}, connection=conn)
        assert run_count(pg_client) == 0
        conn.commit()
    assert (await jobs.retrieve(handle.id)).status == RunStatus.QUEUED
