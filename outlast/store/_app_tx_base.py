"""The store's part in triggering inside the application's own transaction.

``trigger_in`` writes runs through a connection the application owns and has a
transaction open on: the runs commit, or roll back, with the application's own writes
(an outbox with no outbox table). Only PostgreSQL can do it (``_sql_app_tx``); the
SQLite store, which owns its file's connection, says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError

if TYPE_CHECKING:
    from .base import NewRun, TriggerResult


class AppTransactionStore:
    """Mixed into ``Store``."""

    def trigger_in(self, connection: Any, runs: Sequence[NewRun]) -> list[TriggerResult]:
        """Insert ``runs`` through ``connection`` (a psycopg 3 connection inside a
        transaction), without committing; the caller's commit makes them visible and
        wakes the workers, its rollback leaves no trace of them."""
        raise ConfigurationError(
            "triggering inside your own transaction (connection=) needs PostgreSQL: "
            f"this store is {type(self).__name__}; trigger without connection=, or use "
            "Django's transaction.on_commit",
            field="connection",
        )
