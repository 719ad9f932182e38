"""The storage seam: the only interface the runtime uses to reach the database.

One implementation per backend (``sqlite.py``, ``postgres.py``) over shared SQL logic in
the ``_sql*.py`` parts. Every method is synchronous and runs in one transaction; async
callers hop to a thread. Nothing here knows about tasks' Python code.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._clock import Clock
from ..runs import JournalEntry, Run, RunEvent
from ._versions_base import VersionScope, VersionStore


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


class Store(VersionStore, abc.ABC):
    """The database behind outlast. One instance per process; thread-safe."""

    url: str
    clock: Clock

    # -- lifecycle ------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> int:
        """Bring the schema to the current version; return it."""

    @abc.abstractmethod
    def check_schema(self) -> None:
        """Raise SchemaVersionError unless the schema is at the current version."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def now(self) -> float:
        return self.clock.now()

    def refused_data(self, exc: Exception) -> bool:
        """Whether ``exc``, raised by a write, says the database refused the data written
        (text it cannot hold, a value out of range, a key too long for its index) rather
        than that it could not be reached or was busy. The same write would fail the same
        way again: the committer splits such a batch instead of retrying it."""
        return isinstance(exc, ValueError)  # encoding: a lone surrogate in text

    # -- triggering and reading -----------------------------------------------------------
    @abc.abstractmethod
    def trigger(self, runs: Sequence[NewRun]) -> list[TriggerResult]:
        """Insert runs in one transaction, honouring idempotency keys."""

    @abc.abstractmethod
    def get_run(self, env: str, run_id: str) -> Run | None: ...

    @abc.abstractmethod
    def get_runs(self, env: str, run_ids: Sequence[str]) -> list[Run]: ...

    @abc.abstractmethod
    def list_runs(
        self,
        env: str,
        *,
        status: Sequence[str] | None = None,
        task_id: str | None = None,
        tag: str | None = None,
        queue: str | None = None,
        created_from: float | None = None,
        created_to: float | None = None,
        search: str | None = None,
        limit: int = 50,
        before: str | None = None,
        parent_id: str | None = None,
    ) -> list[Run]:
        """Newest first; ``before`` is a run id cursor."""

    @abc.abstractmethod
    def journal(self, run_id: str) -> list[JournalEntry]: ...

    @abc.abstractmethod
    def events(self, run_id: str, after_id: int = 0) -> list[RunEvent]: ...

    @abc.abstractmethod
    def count_runs(self, env: str) -> dict[str, dict[str, int]]:
        """Run counts by task and status."""

    # -- control --------------------------------------------------------------------------
    @abc.abstractmethod
    def cancel(self, env: str, run_id: str) -> tuple[Run, list[str]]:
        """Cancel a run (and its waiting children); return it and the runs that ended now."""

    # -- queues ---------------------------------------------------------------------------
    @abc.abstractmethod
    def declare_queues(self, env: str, specs: Sequence[QueueSpec]) -> None: ...

    @abc.abstractmethod
    def update_queue(
        self,
        env: str,
        name: str,
        *,
        paused: bool | None = None,
        concurrency_limit: int | bool | None = False,
    ) -> dict[str, Any]:
        """Pause/resume or set the limit (None removes it; False leaves it)."""

    @abc.abstractmethod
    def list_queues(self, env: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def queue_state(self, env: str, queue: str, ckey: str) -> dict[str, Any] | None:
        """The queue's row with ``key_executing`` for concurrency key ``ckey``."""

    # -- workers --------------------------------------------------------------------------
    @abc.abstractmethod
    def register_worker(self, info: WorkerInfo) -> None: ...

    @abc.abstractmethod
    def heartbeat(self, worker_id: str, lease_seconds: float) -> Heartbeat: ...

    @abc.abstractmethod
    def stop_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    def list_workers(self, env: str | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def claim(
        self,
        worker_id: str,
        env: str,
        serves: Mapping[str, Sequence[str]],
        limit: int,
        scope: VersionScope | None = None,
    ) -> list[Claim]:
        """Take up to ``limit`` ready runs (queue -> task ids served) under the worker's
        lease, honouring queue limits; only those ``scope`` allows, if given (C11)."""

    @abc.abstractmethod
    def apply(self, worker_id: str, ops: Sequence[Op]) -> list[bool]:
        """Commit a batch of operations in one transaction.

        Each op is fenced: it takes effect only if its run is still EXECUTING (or
        DEQUEUED, for ``StartDequeued`` and a hand-back or cancel) under this worker and
        epoch, and the worker's lease is live. Returns, per op, whether it did.
        """

    @abc.abstractmethod
    def apply_and_claim(
        self,
        worker_id: str,
        ops: Sequence[Op],
        env: str,
        serves: Mapping[str, Sequence[str]],
        limit: int,
        reserve: Mapping[tuple[str, str], int] | None = None,
        scope: VersionScope | None = None,
    ) -> tuple[list[bool], list[Claim]]:
        """``apply(ops)`` then ``claim(limit)`` in the same transaction: the slots the
        batch gives back are taken again under one commit. ``limit`` 0 claims nothing.

        ``reserve``: (queue, concurrency key) -> how many more runs to claim DEQUEUED,
        without a slot, for keys whose limit is full: the worker starts one the moment a
        run of that key ends there (``StartDequeued``). Only queues with a concurrency
        limit and no rate limit reserve. Claims of reserved runs have status DEQUEUED."""

    # -- waitpoints -----------------------------------------------------------------------
    @abc.abstractmethod
    def create_token(
        self,
        env: str,
        token_id: str,
        *,
        timeout_at: float | None,
        idempotency_key: str | None = None,
        idempotency_ttl: float | None = None,
        tags: Sequence[str] = (),
        run_id: str | None = None,
        request_key: str | None = None,
    ) -> Waitpoint:
        """Create a pending token, or return the one an ``idempotency_key`` (the caller's,
        per environment) or a ``request_key`` (an API request's, so a retry after a lost
        response gets the first request's token) already made."""

    @abc.abstractmethod
    def complete_waitpoint(
        self, env: str, waitpoint_id: str, output: str, *, is_error: bool = False
    ) -> tuple[Waitpoint, bool]:
        """Complete a pending waitpoint; returns it and whether this call completed it."""

    @abc.abstractmethod
    def get_waitpoint(self, env: str, waitpoint_id: str) -> Waitpoint | None: ...

    @abc.abstractmethod
    def waitpoint_env(self, waitpoint_id: str) -> str | None:
        """The environment a waitpoint belongs to (for signed callback URLs)."""

    @abc.abstractmethod
    def list_waitpoints(
        self, env: str, *, status: str | None = None, limit: int = 100
    ) -> list[Waitpoint]: ...

    # -- scheduling -----------------------------------------------------------------------
    @abc.abstractmethod
    def tick(self) -> TickReport:
        """Promote due delayed runs, expire TTLs, fire timers, reap lapsed workers and
        runs held by no live worker (C10).

        Safe to run from any number of processes at once."""

    @abc.abstractmethod
    def reap_dead_workers(self) -> TickReport:
        """Re-queue the runs of workers whose life lock is free (their process died)."""

    @abc.abstractmethod
    def reap_orphaned_runs(self, now: float | None = None, ended: list[str] | None = None) -> int:
        """Re-queue runs EXECUTING or DEQUEUED whose holder is gone, not alive or past its
        lease on the database clock, whatever its row says (C10); ``tick`` runs it. Ids
        of runs that ended (out of attempts) are appended to ``ended``. How many."""

    @abc.abstractmethod
    def reap_worker(self, worker_id: str) -> int:
        """Declare a worker dead and re-queue its runs now; how many runs."""

    # -- wake-ups -------------------------------------------------------------------------
    @abc.abstractmethod
    def wait_for_work(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning early when new work may be ready."""

    def wake_local(self) -> None:
        """Wake this process's waiters (work was created in-process)."""

    @abc.abstractmethod
    def take_hooks_due(self, env: str, task_ids: Sequence[str]) -> list[Run]:
        """Runs that ended outside a worker and whose end hooks have not run yet."""

    # -- task definitions -----------------------------------------------------------------
    @abc.abstractmethod
    def publish_tasks(self, env: str, tasks: Sequence[TaskDef]) -> None: ...

    @abc.abstractmethod
    def get_task(self, env: str, task_id: str) -> TaskDef | None: ...

    @abc.abstractmethod
    def list_tasks(self, env: str) -> list[TaskDef]: ...

    # -- keys, request idempotency and settings (used by the server) ---------------------
    @abc.abstractmethod
    def create_api_key(self, key_id: str, env: str, prefix: str, key_hash: str) -> None: ...

    @abc.abstractmethod
    def find_api_key(self, key_hash: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def list_api_keys(self, env: str | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def revoke_api_key(self, key_id_or_prefix: str) -> int: ...

    @abc.abstractmethod
    def trigger_once(
        self, env: str, request_key: str, runs: Sequence[NewRun]
    ) -> tuple[list[TriggerResult], bool]:
        """Trigger unless a request with this key already did (then return its runs)."""

    @abc.abstractmethod
    def forget_old_requests(self, older_than: float = 24 * 3600.0) -> None: ...

    @abc.abstractmethod
    def reset_idempotency_key(self, env: str, task_id: str, key: str) -> list[str]:
        """Release an idempotency key; returns the runs that held it."""

    @abc.abstractmethod
    def remember_request(self, env: str, key: str, response: str) -> tuple[str, bool]:
        """Keep ``response`` under a request key unless one is kept; return the kept one."""

    @abc.abstractmethod
    def put_packet(self, env: str, path: str, content_type: str, data: str) -> None: ...

    @abc.abstractmethod
    def get_packet(self, env: str, path: str) -> tuple[str, str] | None: ...

    @abc.abstractmethod
    def get_setting(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_setting_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless a value exists; return the stored one."""

    # -- dashboard sessions: the SHA-256 of a login's session id, until logout or expiry --
    @abc.abstractmethod
    def create_dashboard_session(self, id_hash: str, expires_at: float) -> None:
        """Keep a login (and forget expired ones)."""

    @abc.abstractmethod
    def dashboard_session_alive(self, id_hash: str) -> bool: ...

    @abc.abstractmethod
    def end_dashboard_session(self, id_hash: str) -> None: ...

    @abc.abstractmethod
    def live_task_ids(self, env: str) -> set[str]:
        """Task ids served by at least one live worker."""

    @abc.abstractmethod
    def acquire_life_lock(self, worker_id: str) -> tuple[LifeLock, int | None, str | None]:
        """Take the lock a worker holds for its whole life: (lock, lock_key, lock_path)."""

    def dead_workers(self, alive: Sequence[dict[str, Any]]) -> list[str]:
        """Backend hook: the ids among ``alive`` whose life lock is free (they died)."""
        return []

    # -- cron schedules (outlast/_schedule_crud.py and _schedule_firing.py compute the
    # slots; the store keeps them) --
    @abc.abstractmethod
    def insert_schedule(self, schedule: Schedule) -> bool:
        """Insert; False (and nothing written) if its deduplication key is taken."""

    @abc.abstractmethod
    def save_schedule(self, schedule: Schedule) -> Schedule | None:
        """Write a schedule's definition, state and next slot by id; None if it is gone."""

    @abc.abstractmethod
    def get_schedule(
        self, env: str, schedule_id: str | None = None, *, deduplication_key: str | None = None
    ) -> Schedule | None: ...

    @abc.abstractmethod
    def list_schedules(
        self,
        env: str,
        *,
        task_id: str | None = None,
        external_id: str | None = None,
        type: str | None = None,
        active: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Schedule], int]:
        """A page of schedules, oldest first, and how many match in all."""

    @abc.abstractmethod
    def delete_schedule(self, env: str, schedule_id: str) -> bool: ...

    @abc.abstractmethod
    def sync_declarative_schedules(
        self, env: str, served: Sequence[str], declared: Sequence[Schedule]
    ) -> None:
        """Create or update the schedules ``@task(cron=...)`` declares, and deactivate the
        declarative schedules of ``served`` task ids that declare none any more."""

    @abc.abstractmethod
    def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        """Active schedules whose next slot is at or before ``now``, earliest first."""

    @abc.abstractmethod
    def fire_schedules(self, fires: Sequence[ScheduleFire]) -> list[str | None]:
        """Fire slots in one transaction: each advances its schedule from the next slot it
        was read with (compare and set), claims (schedule, slot) by primary key, and
        inserts its run; returns the run id, or None where another scheduler won (C6)."""

    @abc.abstractmethod
    def schedule_slots(self, schedule_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The latest fired slots: slot, run_id, fired_at; newest first."""

    @abc.abstractmethod
    def prune_schedule_slots(self, older_than: float = 7 * 24 * 3600.0) -> int:
        """Forget fired slots older than this many seconds (their schedules moved on)."""


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
