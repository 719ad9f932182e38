"""``wait.for_event``: park a run until a matching event is published (or a timeout).

The wait is a waitpoint of kind "event" plus an ``event_waits`` row saying what completes
it. Registering it takes the event name's lock (``store/_sql_events.py``), the same lock a
publish of that name takes first, so every event published after the registration
commits is checked against it. An event published *before* the registration counts only
with ``since=`` (a lookback over the event log): the newest matching event published
within that window completes the wait at once. The registration happens before the
journal records the wait and is idempotent by the waitpoint's id (derived from the run
and the journal key), so a worker killed between the two registers the same waitpoint
again on replay, and an event that arrived meanwhile is not lost.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from . import _events, _serde
from ._errors import ConfigurationError, OutlastError
from ._ids import derived_id
from ._run_context import _require, fingerprint
from ._waits import WaitResult, _wait_result
from .store._events_base import EventStore, EventWait


def _seconds(value: timedelta | float | int, field: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ConfigurationError(f"{field} must not be negative", field=field)
    return seconds


def _spec(name: str, match: str | None, value: Any, if_: str | None
          ) -> tuple[str | None, str | None]:
    """The wait's match in stored form (path, JSON value), every argument checked."""
    _events.check_name(name, "name")
    if if_ is not None:
        if match is not None:
            raise ConfigurationError("give match= and value=, or if_=, not both", field="if_")
        _events.compile_expr(if_, "if_")
        return None, None
    if match is None:
        return None, None
    _events.check_path(match, "match")
    return match, _serde.to_json(value)


async def for_event(
    name: str,
    *,
    match: str | None = None,
    value: Any = None,
    if_: str | None = None,
    timeout: timedelta | float | None = None,
    since: timedelta | float | None = None,
) -> WaitResult:
    ctx = _require("wait.for_event()")
    path, value_json = _spec(name, match, value, if_)
    async with ctx.call("for_event", "event", fingerprint(name, path, value_json, if_)) as call:
        waitpoint_id = derived_id("waitpoint", ctx.run.id, call.key)
        if call.entry is None:
            store = ctx.store
            if not isinstance(store, EventStore):  # pragma: no cover - every Store is one
                raise OutlastError("this store keeps no events")
            now = store.now()
            wp = await asyncio.to_thread(
                store.register_event_wait,
                ctx.run.env,
                EventWait(waitpoint_id, name, path, value_json, if_),
                run_id=ctx.run.id,
                timeout_at=now + _seconds(timeout, "timeout") if timeout is not None else None,
                since=now - _seconds(since, "since") if since is not None else None,
                planner=_events.Planner(ctx.run.env),
            )
            await ctx.commit(call.start_wait(now, waitpoint_id=waitpoint_id))
            if wp.status != "pending":
                return _wait_result(wp.status, wp.output, wp.is_error)
        else:
            state = ctx.waitpoints.get(waitpoint_id)
            if state is not None and state.status != "pending":
                return _wait_result(state.status, _serde.loads(state.output), state.is_error)
        await ctx.block(call.key, waitpoint_id)
        raise AssertionError("unreachable")  # pragma: no cover
