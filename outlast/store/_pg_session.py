"""PostgreSQL session features and connection poolers (PgBouncer).

Two things outlast needs are properties of a PostgreSQL *session*, not of a transaction:
a worker's life lock (a session advisory lock that dies with the process, C9) and
LISTEN for wake-ups. A pooler in transaction mode hands each transaction to whichever
server connection is free, so a session lock would outlive the worker that took it on a
pooled server connection, and notifications would reach no one. Everything else outlast
does is transaction-scoped and works through any pooler.

So session features use ``OUTLAST_DATABASE_DIRECT_URL`` when it is set (one connection
per process for the life lock, one for LISTEN), and everything else the pool of
``OUTLAST_DATABASE_URL``. A session connection on a URL that turns out to go through a
pooler is refused with an error naming the setting. A pooler shows itself in the backend
key it sends at connection start: PgBouncer makes one up per client, so the process id
in it is not the server process's ``pg_backend_pid()``; a TCP proxy or a port mapping
passes the server's own through. Pooled connections behind a pooler also do without
server-side prepared statements, which PgBouncer before 1.21 does not carry across
transactions.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .._errors import ConfigurationError

DIRECT_URL_SETTING = "OUTLAST_DATABASE_DIRECT_URL"


def behind_pooler(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a pooler (one round trip)."""
    row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert row is not None
    pid = row["pid"] if isinstance(row, dict) else row[0]
    return int(pid) != conn.info.backend_pid


def configure_pooled(conn: psycopg.Connection[Any]) -> None:
    """For the pool's new connections: no server-side prepared statements behind a
    pooler (the statement would be prepared on one server connection, used on another)."""
    if behind_pooler(conn):
        conn.prepare_threshold = None


def session_connection(url: str, direct_url: str | None, purpose: str,
                       **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection for a session feature: on ``direct_url`` when set (trusted as
    given: a session-mode pooler keeps sessions too), else on ``url`` once it is known
    to reach PostgreSQL itself."""
    conn = psycopg.connect(direct_url or url, autocommit=True, **kwargs)
    if direct_url is None and behind_pooler(conn):
        conn.close()
        raise ConfigurationError(
            f"the database URL goes through a connection pooler (PgBouncer?), and "
            f"{purpose} needs a PostgreSQL session of its own, which a pooler in "
            f"transaction mode does not keep. Set {DIRECT_URL_SETTING} to a URL that "
            f"reaches PostgreSQL directly (everything else keeps using the pooler); if "
            f"the pooler runs in session mode, {DIRECT_URL_SETTING} may be the same URL",
            field=DIRECT_URL_SETTING,
        )
    return conn
