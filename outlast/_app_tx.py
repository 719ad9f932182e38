"""Triggering inside the application's own database transaction (PostgreSQL).

``Client.trigger(task, payload, connection=conn)`` lands here, through the store
transport (an HTTP client refuses it with ``OVER_HTTP``). ``conn`` is the
application's psycopg 3 connection, a SQLAlchemy ``Session`` or ``Connection`` over
psycopg 3, or a Django database connection (``django.db.connection``) on the psycopg 3
backend; it must point at the database outlast uses. The run is validated and built as
for any trigger, then written through that connection: it commits with the
application's writes and disappears with their rollback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError
from ._trigger import TriggerOptions, prepare_run

if TYPE_CHECKING:
    from .store.base import Store
    from .tasks import Task


def driver_connection(connection: Any) -> Any:
    """The psycopg connection behind ``connection`` (psycopg, SQLAlchemy or Django)."""
    module = type(connection).__module__
    if module.startswith("sqlalchemy"):
        # A Session's connection() joins (or begins) the session's transaction.
        conn = connection.connection() if hasattr(connection, "get_bind") else connection
        return conn.connection.driver_connection
    if module.startswith("django"):
        connection.ensure_connection()
        if not connection.in_atomic_block:
            raise ConfigurationError(
                "Django is in autocommit here: wrap the writes and the trigger in "
                "transaction.atomic() (or trigger with on_commit)",
                field="connection",
            )
        return connection.connection
    return connection


def trigger_in(
    store: Store,
    env: str,
    task: Task[Any, Any] | str,
    payload: Any,
    options: TriggerOptions,
    connection: Any,
) -> tuple[str, bool]:
    """The run of a trigger, validated and built as any other, written through the app's
    ``connection``: its id, and whether an idempotency key returned an existing run."""
    run = prepare_run(store, env, task, payload, options)
    result = store.trigger_in(driver_connection(connection), [run])[0]
    return result.id, result.is_cached


# An HTTP client cannot write in the app's transaction: it says so in these words.
OVER_HTTP = ("connection= writes the run in your database transaction, so it needs a "
             "client over the database (database_url=), not one over HTTP")
