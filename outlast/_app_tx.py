"""Triggering inside the application's own database transaction (PostgreSQL).

``Client.trigger(task, payload, connection=conn)`` lands here. ``conn`` is the
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
from .runs import RunHandle
from .tasks import Task

if TYPE_CHECKING:
    from .client import Client


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
    client: Client,
    task: Task[Any, Any] | str,
    payload: Any,
    options: TriggerOptions,
    connection: Any,
) -> RunHandle[Any]:
    from .client import _output_type

    if client._http is not None:
        raise ConfigurationError(
            "connection= writes the run in your database transaction, so it needs a "
            "client over the database (database_url=), not one over HTTP",
            field="connection",
        )
    store = client._ready()
    run = prepare_run(store, client.env, task, payload, options)
    result = store.trigger_in(driver_connection(connection), [run])[0]
    return RunHandle(id=result.id, task_id=run.task_id, is_cached=result.is_cached,
                     _output_type=_output_type(task))
