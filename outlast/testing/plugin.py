"""The pytest plugin (registered as the ``outlast`` pytest11 entry point).

Fixtures, each per test:

- ``outlast_clock``: a ``FakeClock`` every timestamp of the store comes from;
- ``outlast_database_url``: a fresh, migrated database: SQLite in the test's temporary
  directory, or PostgreSQL when ``--outlast-database-url`` / ``OUTLAST_TEST_DATABASE_URL``
  names a server (a role that may CREATE DATABASE; each test gets its own database);
- ``outlast_store``, ``outlast_client`` (also the default client of ``task.trigger()``);
- ``outlast_env``: an ``OutlastEnv`` over them with an in-process worker serving every
  imported task (needs pytest-asyncio, or any runner of async fixtures);
- ``outlast_worker``: that env's worker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .._clock import FakeClock
from ..client import Client, set_default_client
from ..store import open_store
from ..store.base import Store
from ..worker import Worker
from ._databases import PostgresDatabases, sqlite_database
from ._env import OutlastEnv

URL_ENV = "OUTLAST_TEST_DATABASE_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("outlast")
    group.addoption(
        "--outlast-database-url",
        default=None,
        help=f"PostgreSQL server for outlast's test databases, one per test (env {URL_ENV}); "
        "SQLite in a temporary directory when unset",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "outlast(tasks=None, env='test'): options of the outlast_env fixture"
    )


@pytest.fixture(scope="session")
def _outlast_postgres(request: pytest.FixtureRequest) -> Iterator[PostgresDatabases | None]:
    url = request.config.getoption("--outlast-database-url") or os.environ.get(URL_ENV)
    if not url or url.startswith("sqlite:"):
        yield None
        return
    databases = PostgresDatabases(url)
    yield databases
    databases.close()


@pytest.fixture
def outlast_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outlast_database_url(
    _outlast_postgres: PostgresDatabases | None, tmp_path: Path
) -> Iterator[str]:
    if _outlast_postgres is None:
        yield sqlite_database(tmp_path)
        return
    name = _outlast_postgres.create()
    try:
        yield _outlast_postgres.url(name)
    finally:
        _outlast_postgres.drop(name)


@pytest.fixture
def outlast_store(outlast_database_url: str, outlast_clock: FakeClock) -> Iterator[Store]:
    store = open_store(outlast_database_url, outlast_clock)
    yield store
    store.close()


@pytest.fixture
def outlast_client(outlast_store: Store) -> Iterator[Client]:
    client = Client(store=outlast_store, env="test")
    set_default_client(client)
    yield client
    set_default_client(None)


async def _env(request: pytest.FixtureRequest, store: Store, clock: FakeClock
               ) -> AsyncIterator[OutlastEnv]:
    marker = request.node.get_closest_marker("outlast")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    async with OutlastEnv(store, clock, **options) as env:
        yield env


def _async_fixture() -> Any:
    """pytest-asyncio's fixture decorator (its strict mode needs it), else pytest's."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - depends on installed packages
        return pytest.fixture
    return pytest_asyncio.fixture


fixture: Callable[[Any], Any] = _async_fixture()


@fixture
async def outlast_env(
    request: pytest.FixtureRequest, outlast_store: Store, outlast_clock: FakeClock
) -> AsyncIterator[OutlastEnv]:
    async for env in _env(request, outlast_store, outlast_clock):
        yield env


@pytest.fixture
def outlast_worker(outlast_env: OutlastEnv) -> Worker:
    return outlast_env.worker
