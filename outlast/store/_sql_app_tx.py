"""PostgreSQL: runs written through the application's connection, in its transaction.

The runs go through the same path as every trigger (``SqlStore._insert_runs``: the same
named queries, idempotency keys, tags, queue rows and the NOTIFY), on a transaction
wrapper over the caller's connection instead of one from the store's pool. PostgreSQL
delivers a NOTIFY only when its transaction commits, so workers wake on the commit and
never for a run that was rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from .._errors import ConfigurationError
from ._rows import Row
from ._sql_core import SqlCore
from .base import NewRun, TriggerResult


class _AppTx:
    """The store's transaction interface over a connection the application owns: rows
    as dicts, whatever row factory the application gave its connection."""

    def __init__(self, conn: psycopg.Connection[Any], queries: dict[str, str]) -> None:
        self.conn = conn
        self.queries = queries

    def q(self, name: str, /, **params: Any) -> list[Row]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(self.queries[name], params).fetchall()

    def x(self, name: str, /, **params: Any) -> int:
        with self.conn.cursor() as cur:
            return cur.execute(self.queries[name], params).rowcount

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(self.queries[name], rows)

    def script(self, sql: str) -> None:
        self.conn.execute(sql.encode())


class AppTransactionMixin(SqlCore):
    """Mixed into PostgresStore (SQLite's store keeps ``Store``'s refusal)."""

    def trigger_in(self, connection: Any, runs: Sequence[NewRun]) -> list[TriggerResult]:
        if not isinstance(connection, psycopg.Connection):
            raise ConfigurationError(
                f"connection must be a psycopg 3 connection, not {type(connection).__name__}",
                field="connection",
            )
        status = connection.info.transaction_status
        if status == TransactionStatus.INERROR:
            raise ConfigurationError(
                "the connection's transaction has failed; roll it back first",
                field="connection",
            )
        if connection.autocommit and status == TransactionStatus.IDLE:
            # Each statement would commit on its own: the runs would not wait for the
            # application's commit, which is the point of passing its connection.
            raise ConfigurationError(
                "the connection is in autocommit mode with no transaction open: open one "
                "(with conn.transaction(): …, or Django's transaction.atomic()) around "
                "your writes and the trigger",
                field="connection",
            )
        # Not added to the store's known queue rows (SqlStore.trigger does after its
        # commit): this transaction may yet roll back the rows it ensured.
        return self._insert_runs(_AppTx(connection, self.q), runs, self.now())
