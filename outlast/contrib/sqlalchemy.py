"""Trigger a run inside a SQLAlchemy session's transaction (PostgreSQL, psycopg 3).

::

    from outlast.contrib.sqlalchemy import trigger

    with Session(engine) as session:
        session.add(Order(id=order_id))
        trigger(session, ship_order, {"order_id": order_id})
        session.commit()          # the order and the run, together; rollback drops both

The engine's URL must be ``postgresql+psycopg://…`` on the database outlast uses.
"""

from __future__ import annotations

from typing import Any

from ..client import Client, default_client
from ..runs import SyncRunHandle
from ..tasks import Task


def trigger(
    session: Any,
    task: Task[Any, Any] | str,
    payload: Any = None,
    *,
    client: Client | None = None,
    **options: Any,
) -> SyncRunHandle[Any]:
    """``Client.trigger`` with ``connection=session``: the run joins the session's
    transaction (a ``Session`` or a ``Connection``)."""
    return (client or default_client()).trigger(task, payload, connection=session, **options)
