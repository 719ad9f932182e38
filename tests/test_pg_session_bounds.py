"""PostgreSQL: the bounds outlast sets on each pooled session (store/_pg_session.py) once,
when the pool opens the connection: idle_in_transaction_session_timeout
(OUTLAST_PG_IDLE_TX_TIMEOUT), the server's TCP keepalives, libpq's. A stricter value of
the database's is kept; a transaction left idle past the bound is ended by the server and
the store goes on on a new connection, nothing of it committed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from outlast import task
from outlast._errors import ConfigurationError
from outlast.client import Client
from outlast.store import open_store
from outlast.store.postgres import PostgresStore
from tests.conftest import _pg_url, drop_pg_database, new_pg_database


@task(id="bounds-filtered", on=["bounds.*"], if_="event.data.plan == 'pro'")
async def filtered(payload: Any) -> None:
    return None


@pytest.fixture
def pg_db() -> Iterator[str]:
    name = new_pg_database()
    try:
        yield name
    finally:
        drop_pg_database(name)


def _setting(store: Any, name: str) -> str:
    with store._pool.connection() as conn:
        return str(conn.execute(f"SHOW {name}").fetchone()[name])


def _open(url: str) -> PostgresStore:
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    return store


def test_each_pooled_session_is_bounded_by_default(pg_db: str) -> None:
    store = _open(_pg_url(pg_db))
    try:
        assert _setting(store, "idle_in_transaction_session_timeout") == "10s"
        assert _setting(store, "tcp_user_timeout") in ("15000", "0")  # 0 on a Unix socket
        with store._pool.connection() as conn:
            given = {o.keyword: o.val for o in conn.pgconn.info or ()}
        assert given[b"keepalives"] == b"1" and given[b"tcp_user_timeout"] == b"15000"
    finally:
        store.close()


def test_the_setting_turns_it_off_or_changes_it_and_a_url_keeps_its_own_keepalives(
    pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTLAST_PG_IDLE_TX_TIMEOUT", "0")
    store = _open(_pg_url(pg_db) + "?keepalives_idle=9")
    try:
        assert _setting(store, "idle_in_transaction_session_timeout") == "0"
        with store._pool.connection() as conn:
            given = {o.keyword: o.val for o in conn.pgconn.info or ()}
        assert given[b"keepalives_idle"] == b"9"
    finally:
        store.close()
    monkeypatch.setenv("OUTLAST_PG_IDLE_TX_TIMEOUT", "2.5")
    store = _open(_pg_url(pg_db))
    try:
        assert _setting(store, "idle_in_transaction_session_timeout") == "2500ms"
    finally:
        store.close()
    for wrong in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("OUTLAST_PG_IDLE_TX_TIMEOUT", wrong)
        with pytest.raises(ConfigurationError, match="OUTLAST_PG_IDLE_TX_TIMEOUT"):
            open_store(_pg_url(pg_db))


def test_a_stricter_bound_of_the_database_is_kept(pg_db: str) -> None:
    with psycopg.connect(_pg_url("postgres"), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {pg_db} SET idle_in_transaction_session_timeout = '3s'"
                      .encode())
    store = _open(_pg_url(pg_db))
    try:
        assert _setting(store, "idle_in_transaction_session_timeout") == "3s"
    finally:
        store.close()


def test_a_transaction_left_idle_past_the_bound_is_ended_and_the_store_goes_on(
    pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTLAST_PG_IDLE_TX_TIMEOUT", "0.3")
    store = _open(_pg_url(pg_db))
    try:
        store.migrate()
        with pytest.raises(psycopg.Error) as ended, store._transaction() as tx:
            tx.x("insert_setting", key="outlast.probe", value="written")
            time.sleep(1.0)  # as a frozen process would: idle inside the transaction
            tx.q("get_setting", key="outlast.probe")
        # The server's error (or a lost connection, as a pipeline reports it): neither is
        # refused data, so a worker's committer retries its batch.
        assert not store.refused_data(ended.value)
        # Rolled back with the session; the pool gives a new connection.
        with store._transaction() as tx:
            assert tx.q("get_setting", key="outlast.probe") == []
    finally:
        store.close()


@pytest.mark.parametrize("cached", [False, True])
def test_a_publish_with_much_to_plan_gets_the_time_for_it(
    pg_db: str, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    """A publish plans its events (CEL filters) in Python inside its transaction: 2,000
    events take far longer than a 0.2 s bound, and the publish still commits; the longer
    bound was its transaction's only. With the subscribers cached (a publish before), the
    statement taking the names' locks sets it (_sql_events_pg)."""
    monkeypatch.setenv("OUTLAST_PG_IDLE_TX_TIMEOUT", "0.2")
    store = _open(_pg_url(pg_db))
    try:
        store.migrate()
        store.publish_tasks("dev", [filtered.definition()])
        if cached:
            Client(store=store, env="dev").publish("bounds.other", {})
        events = [{"name": "bounds.signup", "data": {"plan": "pro" if i % 2 else "free"}}
                  for i in range(2000)]
        t0 = time.monotonic()
        results = Client(store=store, env="dev").publish_many(events)
        assert time.monotonic() - t0 > 0.2
        assert sum(len(r.run_ids) for r in results) == 1000
        assert _setting(store, "idle_in_transaction_session_timeout") == "200ms"
    finally:
        store.close()
