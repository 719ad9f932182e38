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

Bounds on a session that stops answering (C10). A worker frozen (SIGSTOP, a C call
holding the GIL) or cut off while its transaction is open would keep that transaction's
row locks, the queue rows a claim locks among them, and every peer's claim would wait
behind it for good. So each pooled connection that reaches PostgreSQL directly gets
``idle_in_transaction_session_timeout`` (``OUTLAST_PG_IDLE_TX_TIMEOUT``): the server ends
a session left idle inside a transaction that long, rolling it back. No outlast
transaction idles for more than the client's own work between round trips (step bodies,
user code and network calls run outside transactions), milliseconds, but for a publish
planning a large batch of events (CEL filters), which sets a longer bound for its own
transaction (``_sql_events_pg``); a session ended by mistake costs a retry of its
batch, nothing acknowledged. It also gets the server-side TCP keepalives
and user timeout, so a backend whose client vanished without a reset is ended too, and
libpq's client-side ones (as the life lock has), so a client notices a vanished server.

The server-side values are set once per connection, by the pool's configure hook, in the
same round trip as the pooler check: never per transaction. Not as startup ``options``:
PgBouncer refuses a connection with them (unless ``ignore_startup_parameters`` lists
them, and then it drops them). Not behind a pooler at all: a session setting made
through PgBouncer in transaction mode stays on the server connection and leaks to
whichever client gets it next; there PgBouncer's own ``idle_transaction_timeout`` is the
bound, or the server's setting for the role or database (``outlast doctor`` warns when
it sees neither). A stricter value the server, database or role already sets is kept.

No ``lock_timeout``: with these bounds a claim waits behind a stalled holder for at most
the idle timeout, and otherwise only behind a holder still working (a prune, a
migration), where giving up and retrying would wait as long and log errors meanwhile; a
session-wide one would also fail migrations waiting on their lock.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._errors import ConfigurationError

DIRECT_URL_SETTING = "OUTLAST_DATABASE_DIRECT_URL"
IDLE_TX_SETTING = "OUTLAST_PG_IDLE_TX_TIMEOUT"
# No outlast transaction idles longer than its client's work between round trips
# (milliseconds); a third of the default 30 s lease, so a worker frozen inside one stalls
# its peers' claims for less than it would take for its runs to be taken over anyway.
DEFAULT_IDLE_TX_TIMEOUT = 10.0

# libpq's TCP keepalives and user timeout: a client whose server vanished without a reset
# (a silent partition) gives up on it within about 15 s instead of the OS's hours.
KEEPALIVES: Mapping[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}
# The server's twins (seconds, and milliseconds for the user timeout: each GUC's base
# unit, as pg_settings.setting reads): a backend whose client vanished is ended as well.
# PostgreSQL ignores them on a Unix socket.
_SERVER_TCP: Mapping[str, int] = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 15000,
}
# One round trip: the pooler check (pg_backend_pid() against the backend key the client
# was sent), and only when there is no pooler the session settings, each where the server
# knows it (tcp_user_timeout came in PostgreSQL 12) and sets no stricter value itself
# (0 is none).
_CONFIGURE = """
SELECT pg_backend_pid() AS pid,
       (SELECT count(set_config(s.name, s.value::text, false))
        FROM unnest(%(names)s::text[], %(values)s::bigint[]) AS s(name, value)
        JOIN pg_settings p ON p.name = s.name
        WHERE pg_backend_pid() = %(key_pid)s
          AND (p.setting::bigint = 0 OR p.setting::bigint > s.value)) AS set
"""


def behind_pooler(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a pooler (one round trip)."""
    row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert row is not None
    pid = row["pid"] if isinstance(row, dict) else row[0]
    return int(pid) != conn.info.backend_pid


def idle_tx_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """OUTLAST_PG_IDLE_TX_TIMEOUT in seconds (0: none), or the default."""
    raw = (environ.get(IDLE_TX_SETTING) or "").strip()
    if not raw:
        return DEFAULT_IDLE_TX_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigurationError(f"{IDLE_TX_SETTING} must be a number of seconds (0 for "
                                 f"none), not {raw!r}", field=IDLE_TX_SETTING)
    return value


def client_keepalives(url: str) -> dict[str, int]:
    """libpq's keepalive parameters for a connection to ``url``, but those it sets."""
    given = conninfo_to_dict(url)
    return {k: v for k, v in KEEPALIVES.items() if k not in given}


def session_bounds(idle_tx_timeout: float) -> dict[str, int]:
    """The server settings a direct pooled session gets (see the module's docstring);
    ``idle_tx_timeout`` in seconds, 0 for none."""
    bounds = dict(_SERVER_TCP)
    if idle_tx_timeout > 0:
        # The server takes at most INT_MAX milliseconds (24 days): beyond, it refuses.
        ms = round(idle_tx_timeout * 1000)
        bounds["idle_in_transaction_session_timeout"] = min(max(1, ms), 2**31 - 1)
    return bounds


def configure_pooled(conn: psycopg.Connection[Any], bounds: Mapping[str, int]) -> None:
    """For the pool's new connections, in one round trip: ``bounds`` (session_bounds)
    set on a session that reaches PostgreSQL directly; behind a pooler, none, and no
    server-side prepared statements (one would be prepared on one server connection and
    used on another)."""
    row = conn.execute(_CONFIGURE, {"names": list(bounds), "values": list(bounds.values()),
                                    "key_pid": conn.info.backend_pid}).fetchone()
    assert row is not None
    pid = row["pid"] if isinstance(row, dict) else row[0]
    if int(pid) != conn.info.backend_pid:
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


@dataclass(frozen=True)
class IdleTxBounds:
    """What ends a session left idle inside a transaction, besides outlast's own setting
    (for `outlast doctor`)."""

    pooler: bool  # the URL goes through a pooler, so outlast sets nothing on its sessions
    server_ms: int  # idle_in_transaction_session_timeout of the server, database or role
    pooler_s: float | None  # PgBouncer's idle_transaction_timeout; None: not readable


def read_idle_tx_bounds(url: str) -> IdleTxBounds:
    """The bounds in force for sessions on ``url``, read on a connection of its own. Behind
    a pooler, PgBouncer's setting is read on its admin console (the URL's user must be in
    its ``stats_users`` or ``admin_users``)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        pooler = behind_pooler(conn)
        row = conn.execute("SELECT setting FROM pg_settings"
                           " WHERE name = 'idle_in_transaction_session_timeout'").fetchone()
    server_ms = int(row[0]) if row else 0
    pooler_s: float | None = None
    if pooler:
        try:
            with psycopg.connect(make_conninfo(url, dbname="pgbouncer"), autocommit=True,
                                 connect_timeout=10) as console:
                config = {r[0]: r[1] for r in console.execute("SHOW CONFIG").fetchall()}
            pooler_s = float(config["idle_transaction_timeout"])
        except (psycopg.Error, KeyError, ValueError):
            pooler_s = None
    return IdleTxBounds(pooler, server_ms, pooler_s)
