"""Runs: statuses, the Run record, handles and results. Pure data; no I/O of its own."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ._errors import ConfigurationError, RunFailedError
from ._serde import dumps, from_json

T = TypeVar("T")


class RunStatus(enum.StrEnum):
    DELAYED = "DELAYED"
    QUEUED = "QUEUED"
    # Claimed by a worker without a slot: it starts there the moment a run of its queue
    # and concurrency key ends (Trigger.dev's name for a run taken off its queue).
    DEQUEUED = "DEQUEUED"
    EXECUTING = "EXECUTING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELED,
        RunStatus.EXPIRED,
        RunStatus.TIMED_OUT,
    }
)


@dataclass(frozen=True)
class Run:
    """A run as stored. ``output`` and ``payload`` are JSON values (decoded)."""

    id: str
    env: str
    task_id: str
    queue: str
    status: RunStatus
    payload: Any
    output: Any
    error: dict[str, Any] | None
    metadata: dict[str, Any]
    tags: list[str]
    attempt: int
    max_attempts: int
    priority: float
    concurrency_key: str | None
    idempotency_key: str | None
    created_at: float
    updated_at: float
    available_at: float
    delay_until: float | None
    ttl_expires_at: float | None
    started_at: float | None
    finished_at: float | None
    max_duration: float | None
    worker_id: str | None
    parent_id: str | None
    root_id: str | None
    depth: int
    replayed_from: str | None
    cancel_requested: bool
    wait_reason: Any = None
    lease_epoch: int = 0
    exec_seconds: float = 0.0
    segment_started_at: float | None = None
    idempotency_expires_at: float | None = None
    # The task code version the run is locked to (C11); None until its first attempt
    # starts, unless its trigger pinned one.
    version: str | None = None
    # Usage: seconds executed over all attempts (without parked waits or queued time),
    # sat queued, and parked waiting; each as of the run's last segment end.
    active_seconds: float = 0.0
    queued_seconds: float = 0.0
    waited_seconds: float = 0.0

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else self.updated_at
        return max(0.0, end - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["status"] = str(self.status)
        return d


@dataclass(frozen=True)
class JournalEntry:
    key: str
    kind: str
    fingerprint: str | None
    status: str
    output: str | None
    waitpoint_id: str | None
    attempt: int
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class RunEvent:
    id: int
    run_id: str
    ts: float
    kind: str
    attempt: int | None
    level: str | None
    message: str | None
    data: Any
    # On the event that ends an attempt (``attempt_failed``): the seconds that attempt
    # executed, without parked waits or queued time. None on other events.
    active_seconds: float | None = None


@dataclass
class TaskRunResult(Generic[T]):
    """The outcome of a child run awaited by its parent."""

    ok: bool
    id: str
    task_id: str
    status: RunStatus
    output: T | None = None
    error: dict[str, Any] | None = None

    def unwrap(self) -> T:
        if not self.ok:
            message = (self.error or {}).get("message", str(self.status))
            raise RunFailedError(f"run {self.id} ended {self.status}: {message}")
        return self.output  # type: ignore[return-value]


class RunWaiter(Protocol):
    """What an awaitable handle needs from a client (``AsyncClient`` is one): the run now,
    and the run once it is final."""

    async def retrieve(self, run_id: str) -> Run: ...

    async def wait_for_run(
        self, run_id: str, timeout: float | None = None, poll: float = 0.05
    ) -> Run: ...


class SyncRunWaiter(Protocol):
    """What a blocking handle needs from a client (``Client`` is one)."""

    def retrieve(self, run_id: str) -> Run: ...

    def wait_for_run(
        self, run_id: str, timeout: float | None = None, poll: float = 0.05
    ) -> Run: ...


# The client a handle made without one waits through (a child run's handle inside a task,
# a handle built by hand): the process-wide AsyncClient. ``outlast.client`` installs it
# when imported, which ``outlast/__init__.py`` does before any handle can exist; this
# module is data below the store and the client, so it does not import them.
_default_waiter: Callable[[], RunWaiter] | None = None


def set_default_waiter(factory: Callable[[], RunWaiter]) -> None:
    global _default_waiter
    _default_waiter = factory


def run_output(run: Run, output_type: Any) -> Any:
    """A final run's output rebuilt as ``output_type``; RunFailedError if it did not
    complete."""
    if run.status != RunStatus.COMPLETED:
        message = (run.error or {}).get("message", "")
        raise RunFailedError(f"run {run.id} ended {run.status}: {message}", run_id=run.id)
    return from_json(dumps(run.output), output_type)


@dataclass
class RunHandle(Generic[T]):
    """What a trigger returns: the run id, and ways to look at the run."""

    id: str
    task_id: str
    is_cached: bool = False
    _client: RunWaiter | None = field(default=None, repr=False, compare=False)
    _output_type: Any = field(default=Any, repr=False, compare=False)

    async def retrieve(self) -> Run:
        return await self._require_client().retrieve(self.id)

    async def result(self, timeout: float | None = None, poll: float = 0.05) -> Run:
        """Wait until the run is final and return it (raises TimeoutError past ``timeout``)."""
        client = self._require_client()
        return await asyncio.wait_for(client.wait_for_run(self.id, poll=poll), timeout)

    async def output(self, timeout: float | None = None) -> T:
        """Wait for the run; its output with the task's return type, or RunFailedError."""
        value: T = run_output(await self.result(timeout), self._output_type)
        return value

    def _require_client(self) -> RunWaiter:
        if self._client is None:
            if _default_waiter is None:  # pragma: no cover - outlast/__init__ installs it
                raise ConfigurationError("no client to wait with: import outlast.client")
            self._client = _default_waiter()
        return self._client


@dataclass
class SyncRunHandle(Generic[T]):
    """What the synchronous ``Client`` returns: ``RunHandle``'s fields, and the same
    methods as blocking calls (a Django view waits with ``handle.result(timeout=30)``)."""

    id: str
    task_id: str
    is_cached: bool = False
    _client: SyncRunWaiter = field(kw_only=True, repr=False, compare=False)
    _output_type: Any = field(default=Any, repr=False, compare=False)

    def retrieve(self) -> Run:
        return self._client.retrieve(self.id)

    def result(self, timeout: float | None = None, poll: float = 0.05) -> Run:
        """Block until the run is final and return it (raises TimeoutError past
        ``timeout``)."""
        return self._client.wait_for_run(self.id, timeout, poll)

    def output(self, timeout: float | None = None) -> T:
        """Block until the run is final; its output with the task's return type, or
        RunFailedError."""
        value: T = run_output(self.result(timeout), self._output_type)
        return value
