"""PostgreSQL's transactions: ``_Tx`` (a transaction's statements, in pipeline mode or
not) and ``late_begin`` (BEGIN sent with the first statement, NOTIFY with COMMIT)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from ._rows import Row


class _Tx:
    """One transaction's statements. With ``pipe`` (pipeline mode, apply_and_claim's
    transaction): BEGIN goes with the first statement that waits for its result, and
    statements sent without waiting (``send``) go with the next that waits, at the latest
    COMMIT; an error of theirs is raised there, and the transaction rolls back."""

    def __init__(self, conn: psycopg.Connection[Row], queries: Mapping[str, str],
                 pipe: psycopg.Pipeline | None = None) -> None:
        self.conn = conn
        self.queries = queries
        self.pipe = pipe

    def q(self, name: str, /, **params: Any) -> list[Row]:
        return self.conn.execute(self.queries[name], params).fetchall()

    def x(self, name: str, /, **params: Any) -> int:
        cur = self.conn.execute(self.queries[name], params)
        self.flush()  # the row count is the result's: wait for it
        return cur.rowcount

    def send(self, name: str, /, **params: Any) -> None:
        """A statement whose result nothing reads: in pipeline mode, it waits for none."""
        self.conn.execute(self.queries[name], params)

    def flush(self) -> None:
        """In pipeline mode, wait for the results of every statement sent so far."""
        if self.pipe is not None:
            self.pipe.sync()

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if len(rows) == 1:  # executemany's pipeline costs extra round trips for one row
            self.conn.execute(self.queries[name], rows[0])
        elif rows:
            with self.conn.cursor() as cur:
                cur.executemany(self.queries[name], rows)

    def script(self, sql: str) -> None:
        self.conn.execute(sql.encode())


class _LateBeginTx(_Tx):
    """A transaction whose BEGIN goes with its first statement (``q`` or ``x``), in one
    round trip: pipeline mode for those two, left after them (COPY has none). A batch
    publish's first statement takes its names' locks (_sql_events_pg). Its NOTIFYs go
    with COMMIT, in one round trip too (a notification is sent at commit either way)."""

    begun = False
    notify: tuple[str, ...] = ()
    # First statements planned generically (the plan psycopg's prepared statement keeps)
    # rather than afresh for each batch's parameters: a batch's lock statement, a CTE of
    # five parts whose plan does not depend on them, cost the server about 1 ms a batch to
    # plan. Set for that statement alone, in the same round trip.
    generic: frozenset[str] = frozenset({"ev_lock_seqs_and_waits"})

    def q(self, name: str, /, **params: Any) -> list[Row]:
        return self._first(name, params).fetchall()

    def x(self, name: str, /, **params: Any) -> int:
        return self._first(name, params).rowcount

    def _first(self, name: str, params: Mapping[str, Any]) -> psycopg.Cursor[Row]:
        if self.begun:
            return self.conn.execute(self.queries[name], params)
        # (plan_cache_mode came in PostgreSQL 12; an older server plans as before)
        generic = name in self.generic and self.conn.info.server_version >= 120000
        with self.conn.pipeline():  # its exit waits for every result
            self.conn.execute("BEGIN")
            self.begun = True
            if generic:
                self.conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cur = self.conn.execute(self.queries[name], params)
            if generic:
                self.conn.execute("SET LOCAL plan_cache_mode = DEFAULT")
        return cur


@contextlib.contextmanager
def late_begin(pool: ConnectionPool[psycopg.Connection[Row]], queries: Mapping[str, str]
               ) -> Iterator[_Tx]:
    """A transaction whose BEGIN goes with its first statement (_LateBeginTx): a round
    trip less, for one that must leave pipeline mode after it (a batch publish's COPY)."""
    with pool.connection() as conn:
        tx = _LateBeginTx(conn, queries)
        try:
            yield tx
            if tx.notify:
                with conn.pipeline():  # its exit waits for COMMIT
                    for env in tx.notify:
                        conn.execute(queries["notify"], {"env": env})
                    conn.execute("COMMIT")
            elif tx.begun:
                conn.execute("COMMIT")
        except BaseException:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            raise
