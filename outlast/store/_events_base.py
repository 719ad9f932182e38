"""Events, the store's side: typed rows, the planner seam and the abstract methods.

Publishing an event is one transaction: the event joins the environment's log (unless
its id is still within its deduplication window: then nothing at all is written), one run
is inserted per subscribed task the planner says matches, a delivery row records what
the event did to each subscriber (a run, filtered out, ...), unfinished runs of tasks
that cancel on the event are cancelled, and waits registered for it complete.

What matches is decided in Python by an ``EventPlanner`` (``outlast/_events.py``: CEL
filters, payload checks, match paths) that the store calls inside that transaction, so
the store stays SQL and the decision sees exactly the subscribers and waits the
transaction sees. Subscriptions are read from the published task definitions (their
``spec["events"]``), so a server that never imported task code fans out.

Later engineers: debounce and batch (issue 20, part 5) slot in as further outcomes of
``Fanout`` (e.g. "debounced": the run is a pending one updated in place) decided by the
planner; incoming webhooks (part 6) call ``publish_events`` like any publisher.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .._serde import dumps

if TYPE_CHECKING:
    from ._types import NewRun, TaskDef, Waitpoint


@dataclass(frozen=True)
class NewEvent:
    """An event to publish: ``data`` is its JSON text, already validated."""

    id: str
    name: str
    data: str
    dedup_seconds: float
    retention_seconds: float


@dataclass(frozen=True)
class PublishResult:
    """What one published event did: ``duplicate`` if its id was seen within the window
    (then ``run_ids`` are the runs the first publish created)."""

    id: str
    duplicate: bool
    run_ids: list[str]


@dataclass(frozen=True)
class Delivery:
    """What an event did to one subscribed task."""

    task_id: str
    outcome: str  # run | filtered | canceled
    run_id: str | None = None
    reason: str | None = None
    replay: bool = False
    created_at: float = 0.0


@dataclass(frozen=True)
class EventRecord:
    """An event in the log, with what it did to each subscriber."""

    seq: int
    id: str
    env: str
    name: str
    data: Any
    created_at: float
    deliveries: list[Delivery] = field(default_factory=list)
    data_json: str | None = None  # ``data`` as published, when at hand (saves a dump)

    def envelope(self) -> dict[str, Any]:
        """The event as filters and waits see it (``event.name``, ``event.data``, ...)."""
        return {"id": self.id, "name": self.name, "data": self.data, "ts": self.created_at}


@dataclass(frozen=True)
class Fanout:
    """The planner's decision for one event and one subscriber: a run to insert (``run``
    set, outcome "run"), or no run and why (outcome "filtered")."""

    task_id: str
    outcome: str
    run: NewRun | None = None
    reason: str | None = None


@dataclass(frozen=True)
class EventWait:
    """A registered ``wait.for_event``."""

    waitpoint_id: str
    name: str
    match_path: str | None
    match_value: str | None  # JSON text
    expr: str | None


class EventPlanner(Protocol):
    """Python decisions the store asks for inside a publish transaction."""

    def fan_out(
        self, event: EventRecord, subscribers: Sequence[TaskDef], *, replay: bool
    ) -> list[Fanout]:
        """One decision per subscriber whose ``on`` names the event. With ``replay`` the
        subscribers are those asked for on purpose, and filters are still applied."""
        ...

    def cancel_matches(
        self, event: EventRecord, subscribers: Sequence[TaskDef]
    ) -> list[tuple[str, str, Any]]:
        """(task id, payload path, value): cancel the task's unfinished runs whose payload
        has ``value`` at ``path``."""
        ...

    def plain_runs(self, subscribers: Sequence[TaskDef], name: str
                   ) -> tuple[NewRun, ...] | None:
        """The blank runs (id, payload and metadata not set) of the subscribers running on
        events named ``name``, in order, when each takes such an event as it is (no
        filter, payload type, debounce or batch) and none cancels on it: then what an
        event of the name does needs no decision of its own (SQLite's plain batch,
        ``_sql_events_sqlite``). None otherwise."""
        ...

    def payload_at(self, payload_text: str, path: str) -> Any:
        """The value at ``path`` (``data.user_id`` is the payload's ``user_id``)."""
        ...

    def wait_matches(self, event: EventRecord, wait: EventWait) -> bool: ...


def run_metadata(event_id: str, name: str) -> str:
    """The metadata of a run an event created: the event's id and name."""
    return dumps({"event": {"id": event_id, "name": name}})


class EventStore(abc.ABC):
    """The event log, fan-out, cancel-on and event waits (see the module docstring)."""

    @abc.abstractmethod
    def publish_events(
        self, env: str, events: Sequence[NewEvent], planner: EventPlanner
    ) -> list[PublishResult]:
        """Publish in one transaction; a duplicate id (within its window) writes nothing."""

    @abc.abstractmethod
    def register_event_wait(
        self,
        env: str,
        wait: EventWait,
        *,
        run_id: str,
        timeout_at: float | None,
        since: float | None,
        planner: EventPlanner,
    ) -> Waitpoint:
        """The waitpoint of a ``wait.for_event`` (idempotent by its id). With ``since``
        (epoch seconds) the newest matching event in the log published since then
        completes it at once."""

    @abc.abstractmethod
    def replay_event(
        self, env: str, event_id: str, task_id: str | None, planner: EventPlanner
    ) -> list[Delivery]:
        """Deliver a logged event again, on purpose: a new run per matching subscriber
        (or for ``task_id`` only)."""

    @abc.abstractmethod
    def deliver_retained(self, env: str, task_id: str, planner: EventPlanner) -> int:
        """Deliver the retained events a ``replay="retained"`` subscriber has not had yet;
        the number of runs created. Each (event, task) at most once, however often it runs."""

    @abc.abstractmethod
    def list_events(
        self, env: str, *, name: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Newest first, with their deliveries."""

    @abc.abstractmethod
    def get_event(self, env: str, event_id: str) -> EventRecord | None:
        """The newest logged event with this id, with its deliveries."""

    @abc.abstractmethod
    def prune_events(self) -> int:
        """Remove events past their retention, their deliveries, and ended waits."""
