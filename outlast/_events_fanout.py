"""A plain fan-out's runs (``_events.Planner.fan_out``): the runs of subscribers that take
an event as it is (no ``if_``, payload type, debounce or batch), made in one loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._ids import new_ids
from ._trigger import TriggerOptions, published_run
from .store._events_base import Fanout
from .store.base import NewRun

if TYPE_CHECKING:
    from ._events import _Known

_new = object.__new__
_set = object.__setattr__


def template(known: _Known, env: str) -> NewRun:
    """The task's published defaults, checked once per definition (as build_runs, once)."""
    if known.template is None:
        known.template = published_run(known.td, env, "null", TriggerOptions())
    return known.template


def plain_fanouts(plain: Sequence[_Known], payload: str, metadata: str, env: str,
               ids: list[str], id_batch: int) -> list[Fanout]:
    """What ``Planner._run`` makes for each of ``plain`` (no payload type: no reason),
    taking run ids from ``ids`` (refilled in place with ``id_batch`` more). A bulk
    publish plans a run per subscriber and event; the call per run, the run's
    field-by-field copy and the fan-out's keyword dict were half of its planning: here
    the template's fields dict is copied whole and set as the run's, and neither object
    goes through its dataclass ``__init__`` (the fan-out's is frozen)."""
    out = []
    for known in plain:
        blank = known.template or template(known, env)
        if not ids:
            ids.extend(new_ids("run", id_batch))  # the planner's list: a batch at once
        fields = blank.__dict__.copy()
        fields["id"] = ids.pop()
        fields["payload"] = payload
        fields["metadata"] = metadata
        fields["tags"] = list(fields["tags"])  # a list per run, as build_run gives
        run = _new(NewRun)
        run.__dict__ = fields
        fan = _new(Fanout)
        _set(fan, "__dict__", {"task_id": known.td.id, "outcome": "run", "run": run,
                               "reason": None})
        out.append(fan)
    return out
