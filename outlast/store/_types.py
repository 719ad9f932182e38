"""The records the store takes and returns: runs to insert, claims, the operations a
worker commits, waitpoints, schedules, and the typed rows of queues, workers and keys.

Pure data, no I/O; ``base.py`` re-exports every name, so ``from outlast.store.base import
NewRun`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from ..runs import JournalEntry, Run
from ._groups_base import RunGroup


@dataclass
class NewRun:
    """A run to insert. JSON fields are already serialized text."""

    id: str
    env: str
    task_id: str
    queue: str
    payload: str
    max_attempts: int
    tags: list[str] = field(default_factory=list)
    metadata: str = "{}"
    priority: float = 0.0
    concurrency_key: str = ""
    idempotency_key: str | None = None
    idempotency_ttl: float | None = None
    delay: float | None = None  # seconds from now
    ttl: float | None = None  # seconds from now (or from the delay's end)
    max_duration: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    depth: int = 0
    replayed_from: str | None = None
    parent_waitpoint_id: str | None = None
    version: str | None = None  # locked from the start (pinned, or a waited-on child's)
    # W3C traceparent of the span that triggered it, when tracing is on (outlast._tracing)
    trace_context: str | None = None
    # Debounced or batched: joins its group's pending run, if any (``_groups_base``)
    group: RunGroup | None = None
    # The task's cancel_on match paths (``data.user_id``): the store writes the run's values
    # there to run_cancel_keys with it (outlast/_match.py), so an event cancels by index.
    cancel_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class TriggerResult:
    id: str
    is_cached: bool


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    env: str
    host: str
    pid: int
    concurrency: int
    tasks: list[str]
    lease_seconds: float
    lock_key: int | None = None
    lock_path: str | None = None
    version: str = ""  # the task code version it serves (C11)
    draining: bool = False  # serves only runs locked to its version


@dataclass(frozen=True)
class Heartbeat:
    alive: bool
    cancel_requested: list[str]
    # Paused queues in which the worker holds runs DEQUEUED: it hands those back.
    paused_holding: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TaskDef:
    """A task as published by a worker: enough to validate a trigger without its code."""

    id: str
    queue: str
    payload_schema: dict[str, Any]
    spec: dict[str, Any]
    updated_at: float = 0.0


@dataclass(frozen=True)
class QueueSpec:
    """A queue as declared in code."""

    name: str
    concurrency_limit: int | None = None
    global_limit: int | None = None
    rate_limit: tuple[int, float] | None = None


@dataclass(frozen=True)
class Claim:
    """A run handed to a worker, with what it needs to replay."""

    run: Run
    epoch: int
    journal: dict[str, JournalEntry]
    waitpoints: dict[str, WaitpointState]
    logs_recorded: int = 0  # task log lines earlier segments stored (a replay skips them)
    handed_over: bool = False  # a trigger wrote it claimed (store/_pg_handover.py)


@dataclass(frozen=True)
class Handover:
    """A run a trigger wrote claimed by ``worker_id`` (its offer), as its notification
    told; ``claim`` None when the row did not fit in it: read it with ``handed_over``."""

    worker_id: str
    run_id: str
    claim: Claim | None


@dataclass(frozen=True)
class WaitpointState:
    id: str
    kind: str
    status: str  # pending | completed | timed_out
    output: str | None
    is_error: bool


@dataclass(frozen=True)
class Waitpoint:
    id: str
    env: str
    kind: str
    status: str
    run_id: str | None
    timeout_at: float | None
    output: Any
    is_error: bool
    idempotency_key: str | None
    tags: list[str]
    created_at: float
    completed_at: float | None
    waiting_runs: list[str] = field(default_factory=list)
    buttons: dict[str, Any] | None = None  # the dashboard's {label: data}; None: default


# -- operations a worker commits, fenced by (run id, lease epoch) -------------------------


@dataclass
class Op:
    run_id: str
    epoch: int


@dataclass
class StepDone(Op):
    key: str
    kind: str
    fingerprint: str | None
    output: str | None
    attempt: int
    started_at: float
    finished_at: float


@dataclass
class LogLine(Op):
    ts: float
    attempt: int
    level: str
    message: str
    data: str | None
    kind: str = "log"  # "log" for task code's logger; platform notes use their own kind


@dataclass
class SetMetadata(Op):
    metadata: str


@dataclass
class StartWait(Op):
    """Register a durable wait under a journal key.

    ``new_waitpoint`` creates a sleep (``timeout_at``); ``waitpoint_id`` alone refers to an
    existing token. ``children`` are inserted in the same transaction and complete the new
    waitpoint when they end (``kind`` 'children'), or nothing (``kind`` 'trigger')."""

    key: str
    kind: str
    fingerprint: str | None
    attempt: int
    started_at: float
    waitpoint_id: str | None = None
    new_waitpoint_kind: str | None = None
    timeout_at: float | None = None
    children: list[NewRun] = field(default_factory=list)
    result_ids: list[str] = field(default_factory=list)  # filled by the store: child run ids


@dataclass
class EndSegment(Op):
    """The end of an execution segment: the attempt ended, or the run suspended/handed back.

    outcome: completed | failed | retry | timed_out | canceled | handback | suspend
    """

    outcome: str
    output: str | None = None
    error: str | None = None
    retry_at: float | None = None
    exec_seconds: float = 0.0
    wait_on: list[str] = field(default_factory=list)
    wait_reason: str | None = None


@dataclass
class StartDequeued(Op):
    """Start a run this worker holds DEQUEUED (claimed without a slot) in the slot a run
    of the same queue and concurrency key gave back in this batch or an earlier one.

    The worker starts the run's code before this commits; the run's own ops are queued
    after this one, so the batch that carries them starts it first, and if this op is
    fenced out (the worker lost its lease) they are too."""


@dataclass(frozen=True)
class TickReport:
    promoted: int = 0
    expired: int = 0
    reaped_workers: int = 0
    requeued_runs: int = 0
    fired_timers: int = 0
    ended: list[str] = field(default_factory=list)  # runs that reached a final status


class LifeLock(Protocol):
    def alive(self) -> bool:
        """Whether the lock is still held (a worker checks it on every heartbeat)."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class Schedule:
    """A cron schedule of a task. ``type`` is DECLARATIVE (from ``@task(cron=...)``, kept
    in step with the code by worker starts) or IMPERATIVE (created at runtime)."""

    id: str
    env: str
    task_id: str
    type: str
    cron: str
    timezone: str
    external_id: str | None = None
    deduplication_key: str | None = None
    active: bool = True
    next_run_at: float | None = None  # the next slot, epoch seconds; None when inactive
    last_run_at: float | None = None  # the last slot fired
    last_run_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class ScheduleFire:
    """One slot to fire: ``expected_next`` is the schedule's next slot as read (the compare
    and set guard), ``next_run_at`` the one after ``slot``."""

    schedule_id: str
    expected_next: float
    slot: int
    next_run_at: float | None
    run: NewRun


# -- rows the store returns for queues, workers, keys and fired slots ----------------------
# TypedDicts rather than dataclasses: the HTTP API and ``Client.list_queues`` hand them on
# as JSON objects unchanged, and a caller reads only keys declared here, which mypy checks.
# Integer flags (``paused``) are 0/1 as both dialects store them.


class _QueueColumns(TypedDict):
    env: str
    name: str
    concurrency_limit: int | None  # per concurrency key when runs carry one
    global_limit: int | None  # over all keys
    rate_limit_count: int | None
    rate_limit_period: float | None
    paused: int
    limit_overridden: int  # a runtime change wins over the code's declaration
    executing: int  # slots held over all keys
    updated_at: float


class QueueRow(_QueueColumns):
    """A queue as stored; ``update_queue`` returns it."""

    rate_window: str  # JSON list of start times in the current rate window


class QueueListing(QueueRow):
    """A queue as ``list_queues`` shows it."""

    queued: int
    keys: dict[str, int]  # concurrency key -> runs executing (the 50 busiest)


class QueueState(_QueueColumns):
    """A queue as one concurrency key sees it (``queue_state``)."""

    rate_window: list[float]
    key_executing: int
    rate_free_at: float | None  # when the rate limit next lets a run start; None: now


class WorkerRow(TypedDict):
    """A worker as ``list_workers`` shows it."""

    id: str
    env: str
    host: str
    pid: int
    concurrency: int
    tasks: list[str]
    status: str  # alive | stopped | dead
    lock_key: int | None
    lock_path: str | None
    started_at: float
    heartbeat_at: float
    lease_expires_at: float
    stopped_at: float | None
    executing: int


class ApiKeyRow(TypedDict):
    """A secret key as listed: never the key, only its prefix."""

    id: str
    env: str
    prefix: str
    created_at: float
    revoked_at: float | None


class ApiKeyMatch(TypedDict):
    """The key a secret's hash found (``find_api_key``)."""

    id: str
    env: str
    key_hash: str
    revoked_at: float | None


class ScheduleSlot(TypedDict):
    """A slot a schedule fired."""

    slot: int
    run_id: str
    fired_at: float


class TaskDurations(TypedDict):
    """Seconds from start to finish of a task's runs (``duration_percentiles``)."""

    count: float
    p50: float
    p95: float
