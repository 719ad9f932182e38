"""The seam between a client and what it talks to: the calls every transport answers.

``Client`` holds a ``Transport`` and ``AsyncClient`` an ``AsyncTransport``; neither asks
which one it has (httpx's ``Client`` and ``BaseTransport`` are the model). Each has two
implementations: over the database the app shares (``_store_transport``) and over HTTP
to an outlast server (``_http``). The client keeps what is the same whatever the target
(options from keyword arguments, the edge checks of tokens and queues, handles); a
transport validates a trigger and does the call, with the errors the caller sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._bulk import Progress
    from ._trigger import TriggerOptions
    from .runs import Run
    from .store._bulk_base import BulkAction, BulkFilter
    from .store._events_base import NewEvent, PublishResult
    from .store.base import Schedule, Store, Waitpoint
    from .tasks import Task
    from .waitpoints import Token

# A started run: its id, and whether an idempotency key returned an existing one.
Triggered = tuple[str, bool]


class Transport(Protocol):
    """The synchronous calls (``Client``)."""

    @property
    def store(self) -> Store:
        """The database store; ConfigurationError over HTTP."""
        ...

    def check(self) -> None:
        """Make sure the target can serve calls (the store's schema), once."""

    def asynchronous(self) -> AsyncTransport:
        """An asyncio twin on the same target (the same store; a new HTTP session)."""
        ...

    def close(self) -> None: ...

    def trigger(self, task: Task[Any, Any] | str, payload: Any,
                options: TriggerOptions) -> Triggered: ...

    def trigger_in(self, task: Task[Any, Any] | str, payload: Any, options: TriggerOptions,
                   connection: Any) -> Triggered:
        """Write the run through the app's database connection, in its transaction
        (``_app_tx``); ConfigurationError over HTTP."""
        ...

    def batch_trigger(self, task: Task[Any, Any] | str, payloads: Iterable[Any],
                      options: TriggerOptions) -> list[Triggered]: ...

    def retrieve(self, run_id: str) -> Run: ...

    def list_runs(self, **filters: Any) -> list[Run]: ...

    def cancel(self, run_id: str) -> Run: ...

    def replay(self, run_id: str, payload: Any, has_payload: bool) -> tuple[str, str]:
        """Start a replay; the new run's id and task id."""
        ...

    def create_token(self, timeout: float | None, idempotency_key: str | None,
                     idempotency_ttl: float | None, tags: Sequence[str]) -> Token: ...

    def complete_token(self, token_id: str, data: Any) -> Waitpoint: ...

    def get_token(self, token_id: str) -> Waitpoint: ...

    def list_tokens(self, status: str | None, limit: int) -> list[Waitpoint]: ...

    def list_queues(self) -> list[dict[str, Any]]: ...

    def pause_queue(self, name: str, paused: bool) -> dict[str, Any]: ...

    def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]: ...

    # -- schedules ------------------------------------------------------------------------
    def create_schedule(self, task: Task[Any, Any] | str, cron: str, timezone: str | None,
                        external_id: str | None, deduplication_key: str | None
                        ) -> Schedule: ...

    def retrieve_schedule(self, schedule_id: str) -> Schedule: ...

    def list_schedules(self, task_id: str | None, external_id: str | None, type: str | None,
                       active: bool | None, page: int, per_page: int) -> list[Schedule]: ...

    def update_schedule(self, schedule_id: str, task: Task[Any, Any] | str | None,
                        cron: str | None, timezone: str | None, external_id: str | None
                        ) -> Schedule:
        """``external_id`` is ``_schedule_crud.UNSET`` when the caller did not give one."""
        ...

    def set_schedule_active(self, schedule_id: str, active: bool) -> Schedule: ...

    def delete_schedule(self, schedule_id: str) -> Schedule: ...

    # -- bulk actions ---------------------------------------------------------------------
    def bulk_count(self, action: str, f: BulkFilter) -> int: ...

    def start_bulk(self, action: str, f: BulkFilter) -> BulkAction: ...

    def run_bulk(self, bulk_id: str, size: int, on_progress: Progress | None) -> BulkAction:
        """Run a bulk action to its end, from its last committed batch."""
        ...

    def get_bulk(self, bulk_id: str) -> BulkAction: ...

    def list_bulk(self, limit: int) -> list[BulkAction]: ...

    def abort_bulk(self, bulk_id: str) -> BulkAction: ...

    # -- events (``_events_client``) ------------------------------------------------------
    def publish_events(self, items: Sequence[NewEvent]) -> list[PublishResult]: ...

    def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]: ...

    def replay_event(self, event_id: str, task: str | None) -> list[dict[str, Any]]: ...


class AsyncTransport(Protocol):
    """The asyncio calls (``AsyncClient``): the run, token and queue calls of
    ``Transport``, awaitable. Schedule and bulk calls stay on ``Transport`` (admin calls:
    ``AsyncClient`` runs the sync client's in a thread)."""

    async def close(self) -> None: ...

    async def publish_events(self, items: Sequence[NewEvent]) -> list[PublishResult]: ...

    async def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]: ...

    async def replay_event(self, event_id: str, task: str | None) -> list[dict[str, Any]]: ...

    async def trigger(self, task: Task[Any, Any] | str, payload: Any,
                      options: TriggerOptions) -> Triggered: ...

    async def trigger_in(self, task: Task[Any, Any] | str, payload: Any,
                         options: TriggerOptions, connection: Any) -> Triggered: ...

    async def batch_trigger(self, task: Task[Any, Any] | str, payloads: Iterable[Any],
                            options: TriggerOptions) -> list[Triggered]: ...

    async def retrieve(self, run_id: str) -> Run: ...

    async def list_runs(self, **filters: Any) -> list[Run]: ...

    async def cancel(self, run_id: str) -> Run: ...

    async def replay(self, run_id: str, payload: Any, has_payload: bool) -> tuple[str, str]: ...

    async def create_token(self, timeout: float | None, idempotency_key: str | None,
                           idempotency_ttl: float | None, tags: Sequence[str]) -> Token: ...

    async def complete_token(self, token_id: str, data: Any) -> Waitpoint: ...

    async def get_token(self, token_id: str) -> Waitpoint: ...

    async def list_tokens(self, status: str | None, limit: int) -> list[Waitpoint]: ...

    async def list_queues(self) -> list[dict[str, Any]]: ...

    async def pause_queue(self, name: str, paused: bool) -> dict[str, Any]: ...

    async def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]: ...
