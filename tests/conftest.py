"""Test fixtures: the same tests run on real SQLite and real PostgreSQL.

PostgreSQL tests get a fresh database per test, cloned from a migrated template
(``CREATE DATABASE … TEMPLATE``), which takes milliseconds. If PostgreSQL cannot be
reached the PostgreSQL tests fail: they never skip silently (CI must notice).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outlast._clock import FakeClock
from outlast.client import Client, set_default_client
from outlast.store import open_store
from outlast.store.base import Store
from outlast.tasks import Task
from outlast.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "OUTLAST_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# One template per test session (sessions may run side by side on one server), dropped
# when the session ends.
_TEMPLATE = f"outlast_tpl_{os.getpid()}"
_template_ready = False


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def _admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for these tests and is unreachable at {PG_ADMIN_URL}: "
            f"{exc}. Start it (see README) or set OUTLAST_TEST_PG_URL.",
            pytrace=False,
        )


def _ensure_template() -> None:
    global _template_ready
    if _template_ready:
        return
    with _admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {_TEMPLATE}")
    store = open_store(_pg_url(_TEMPLATE))
    store.migrate()
    store.close()
    _template_ready = True


@pytest.fixture(scope="session", autouse=True)
def _drop_template() -> Iterator[None]:
    yield
    if _template_ready:
        with _admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE} WITH (FORCE)")


def new_pg_database() -> str:
    _ensure_template()
    name = f"outlast_t_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    return name


def drop_pg_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of the current backend."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/outlast.db"
        store = open_store(url)
        store.migrate()
        store.close()
        yield url
        return
    name = new_pg_database()
    try:
        yield _pg_url(name)
    finally:
        drop_pg_database(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def encryption_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh OUTLAST_ENCRYPTION_KEY for this test (and the processes it starts): alert
    rules' and incoming webhooks' secrets are sealed with it."""
    from outlast._secret_box import new_key

    key = new_key()
    monkeypatch.setenv("OUTLAST_ENCRYPTION_KEY", key)
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY_FILE", raising=False)
    return key


@pytest.fixture
def now_clock(clock: FakeClock) -> FakeClock:
    """The fake clock at the real time: receivers reject signatures from far-off times."""
    clock.set(time.time())
    return clock


@pytest.fixture
def receiver() -> Iterator[Any]:
    """An HTTP receiver of alert deliveries (tests/alert_receiver.py), started and stopped."""
    from tests.alert_receiver import Receiver

    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def store(db_url: str, clock: FakeClock) -> Iterator[Store]:
    s = open_store(db_url, clock)
    yield s
    s.close()


@pytest.fixture
def client(store: Store) -> Iterator[Client]:
    c = Client(store=store, env="dev")
    set_default_client(c)
    yield c
    set_default_client(None)


@pytest.fixture
async def workers(store: Store) -> AsyncIterator[Callable[..., Worker]]:
    """In-process workers serving exactly the given tasks; shut down after the test."""
    made: list[Worker] = []

    def make(*tasks: Task[Any, Any], **options: Any) -> Worker:
        w = Worker(store, tasks={t.id: t for t in tasks}, env="dev", **options)
        made.append(w)
        return w

    yield make
    for w in made:
        await w.shutdown(grace=0)


def spawn_worker(
    db_url: str,
    app: str,
    *,
    concurrency: int = 10,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """An `outlast worker` in its own process (kill it with SIGKILL when a test says so)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outlast",
            "worker",
            "--app",
            app,
            "--database-url",
            db_url,
            "--env",
            "dev",
            "--concurrency",
            str(concurrency),
            *(extra or []),
        ],
        cwd=ROOT,
        env=full_env,
    )


# outlast.testing's fixtures (the pytest plugin) on this suite's databases: a test that
# uses outlast_env runs on SQLite and on PostgreSQL, with the suite's clock.
@pytest.fixture
def outlast_database_url(db_url: str) -> str:
    return db_url


@pytest.fixture
def outlast_clock(clock: FakeClock) -> FakeClock:
    return clock


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak runs only when asked for (``-m soak``), as pyproject.toml's marker says: every
    test marked ``soak``, in any folder, is deselected otherwise."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    keep = [i for i in items if i.get_closest_marker("soak") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def wait_for_lock_waiter(url: str, deadline: float, what: str) -> None:
    """Until a session of the database at ``url`` waits on a lock (a statement blocked
    on another transaction's row or advisory lock); else fail, saying ``what``."""
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'").fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError(what)
