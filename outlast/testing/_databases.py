"""Fresh databases for tests: a SQLite file in a temporary directory, or a PostgreSQL
database cloned per test from a migrated template (``CREATE DATABASE … TEMPLATE``, a
few milliseconds), created on the server whose URL the user gives and dropped after."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .._errors import ConfigurationError
from ..store import open_store


class PostgresDatabases:
    """Per-test databases on the server at ``admin_url`` (a role that may CREATE
    DATABASE). One migrated template per test session, dropped by ``close``."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"outlast_testing_tpl_{os.getpid()}"
        self._ready = False

    def _execute(self, sql: str) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on installed extras
            raise ConfigurationError(
                "a PostgreSQL test database needs the postgres extra: "
                "pip install 'outlast[postgres]'"
            ) from exc
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.encode())

    def url(self, name: str) -> str:
        base, _, _ = self.admin_url.partition("?")
        base, _, _ = base.rpartition("/")
        return f"{base}/{name}"

    def create(self) -> str:
        """A new migrated database; returns its name."""
        if not self._ready:
            self._execute(f"DROP DATABASE IF EXISTS {self.template} WITH (FORCE)")
            self._execute(f"CREATE DATABASE {self.template}")
            store = open_store(self.url(self.template))
            try:
                store.migrate()
            finally:
                store.close()
            self._ready = True
        name = f"outlast_test_{uuid.uuid4().hex[:12]}"
        self._execute(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return name

    def drop(self, name: str) -> None:
        self._execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        if self._ready:
            self.drop(self.template)
            self._ready = False


def sqlite_database(directory: Path) -> str:
    """A migrated SQLite database in ``directory``; returns its URL."""
    url = f"sqlite:///{directory}/outlast.db"
    store = open_store(url)
    try:
        store.migrate()
    finally:
        store.close()
    return url
