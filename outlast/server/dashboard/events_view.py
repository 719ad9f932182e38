"""The dashboard's Events page: the event log, newest first, filtered by name; each
event with the runs it created and, for each subscriber it did not run, why (its
``if_`` was false or failed). The data is the store's event log (``_sql_events.py``)."""

from __future__ import annotations

from starlette.responses import Response

from ...store._events_base import EventStore
from ._fmt import pretty
from ._web import Ctx

PAGE = 100


def events_page(ctx: Ctx) -> Response:
    name = ctx.arg("name") or None
    store = ctx.store
    events = (store.list_events(ctx.env, name=name, limit=PAGE)
              if isinstance(store, EventStore) else [])
    rows = [(e, pretty(e.data)) for e in events]
    return ctx.render("events.html", active="events", rows=rows, name=name or "",
                      page_size=PAGE)
