"""The storage seam. ``open_store`` picks the backend from the URL scheme."""

from __future__ import annotations

import os
from pathlib import Path

from .._clock import Clock
from .._errors import ConfigurationError
from .base import Store

DEFAULT_URL = "sqlite:///.outlast/outlast.db"


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("OUTLAST_DATABASE_URL") or DEFAULT_URL


def open_store(url: str | None = None, clock: Clock | None = None) -> Store:
    url = database_url(url)
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url, clock)
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        try:
            from ._pg_session import idle_tx_timeout
            from .postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - depends on installed extras
            raise ConfigurationError(
                "PostgreSQL needs the postgres extra: pip install 'outlast[postgres]'"
            ) from exc
        # Session features (worker life locks, LISTEN) behind a pooler: _pg_session.
        return PostgresStore(url, clock,
                             direct_url=os.environ.get("OUTLAST_DATABASE_DIRECT_URL") or None,
                             idle_tx_timeout=idle_tx_timeout())
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use sqlite:///path.db or postgresql://…",
        field="OUTLAST_DATABASE_URL",
    )


__all__ = ["DEFAULT_URL", "Path", "Store", "database_url", "open_store"]
