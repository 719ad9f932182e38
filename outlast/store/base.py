"""The storage seam: the only interface the runtime uses to reach the database.

``Store`` is the union of role interfaces, one per kind of caller, so each caller names
the slice it uses: ``WorkerStore`` (the worker), ``ApiStore`` (the HTTP API),
``DashboardStore`` (the dashboard; its summaries are ``DashboardReads``),
``SchedulerStore`` (the tick and cron), ``AccessStore`` (keys and logins), over
``RunReads``, ``RunWrites``, ``TaskDefs``, ``Settings`` and ``StoreBase``. Each method is
declared once, in its role; ``open_store`` returns the whole ``Store``.

One implementation per backend (``sqlite.py``, ``postgres.py``) over shared SQL logic in
the ``_sql*.py`` parts. Every method is synchronous and runs in one transaction; async
callers hop to a thread. Nothing here knows about tasks' Python code. The records that
cross the seam live in ``_types.py`` and are importable from here.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Literal

from .._clock import Clock
from ..runs import JournalEntry, Run, RunEvent
from ._alerts_base import AlertStore, ErrorStore
from ._app_tx_base import AppTransactionStore
from ._bulk_base import BulkStore
from ._events_base import EventStore
from ._group_trigger_base import GroupTriggerStore, TriggerRequest
from ._observability_base import ObservabilityStore, RunTraces
from ._retention_base import RetentionStore
from ._types import (
    ApiKeyMatch,
    ApiKeyRow,
    Claim,
    EndSegment,
    Handover,
    Heartbeat,
    LifeLock,
    LogLine,
    NewRun,
    Op,
    QueueListing,
    QueueRow,
    QueueSpec,
    QueueState,
    Schedule,
    ScheduleFire,
    ScheduleSlot,
    SetMetadata,
    StartDequeued,
    StartWait,
    StepDone,
    TaskDef,
    TaskDurations,
    TickReport,
    TriggerResult,
    Waitpoint,
    WaitpointState,
    WorkerInfo,
    WorkerRow,
)
from ._usage_base import UsageRollups, UsageStore
from ._versions_base import VersionScope, VersionStore
from ._webhooks_base import WebhookStore


class StoreBase(abc.ABC):
    """What every role shares: the schema, the clock, closing, and wake-ups."""

    url: str
    clock: Clock
    # Which database: callers that tune for one (the worker's poll interval) ask this,
    # never the class's name.
    backend: Literal["sqlite", "postgres"]

    @abc.abstractmethod
    def migrate(self, *, contract: bool = False) -> int:
        """Bring the schema to the current version (a contract migration only if no live
        process predates it; ``contract``: raise if one waits); return the version."""

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

    @abc.abstractmethod
    def wait_for_work(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning early when new work may be ready."""

    def wake_local(self) -> None:  # noqa: B027 - optional hook
        """Wake this process's waiters (work was created in-process)."""

    def wakeup_fd(self) -> int | None:
        """A file descriptor that turns readable when ``wait_for_work`` would return
        early, for an event loop to watch instead of blocking a thread in it; None if
        there is none (now). May block (a connection): call it off the loop."""
        return None

    def drain_wakeups(self) -> bool:
        """Read what arrived on ``wakeup_fd`` without blocking; False if it is lost (the
        caller stops watching it and asks ``wakeup_fd`` again)."""
        return False

    def take_handovers(self) -> tuple[list[Handover], bool]:
        """The runs triggers handed to workers (``apply_and_claim``'s offer) that the
        last ``drain_wakeups`` read, and whether anything else arrived (a wake-up for
        every worker waiting)."""
        return [], True


class TaskDefs(StoreBase):
    """Task definitions as workers publish them: what validates a trigger without the code."""

    @abc.abstractmethod
    def publish_tasks(self, env: str, tasks: Sequence[TaskDef]) -> None: ...

    @abc.abstractmethod
    def get_task(self, env: str, task_id: str) -> TaskDef | None: ...

    @abc.abstractmethod
    def list_tasks(self, env: str) -> list[TaskDef]: ...


class RunReads(StoreBase):
    """Reading runs, their journals and events, waitpoints, queues and workers."""

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
    def child_runs(self, env: str, run_id: str, limit: int = 100) -> list[Run]:
        """The runs ``run_id`` triggered, oldest first."""

    @abc.abstractmethod
    def journal(self, run_id: str) -> list[JournalEntry]: ...

    @abc.abstractmethod
    def events(self, run_id: str, after_id: int = 0) -> list[RunEvent]: ...

    @abc.abstractmethod
    def count_runs(self, env: str) -> dict[str, dict[str, int]]:
        """Run counts by task and status."""

    @abc.abstractmethod
    def get_waitpoint(self, env: str, waitpoint_id: str) -> Waitpoint | None: ...

    @abc.abstractmethod
    def list_waitpoints(
        self, env: str, *, status: str | None = None, limit: int = 100
    ) -> list[Waitpoint]: ...

    @abc.abstractmethod
    def list_queues(self, env: str) -> list[QueueListing]: ...

    @abc.abstractmethod
    def queue_state(self, env: str, queue: str, ckey: str) -> QueueState | None:
        """The queue's row with ``key_executing`` for concurrency key ``ckey``."""

    @abc.abstractmethod
    def list_workers(self, env: str | None = None) -> list[WorkerRow]: ...

    @abc.abstractmethod
    def live_task_ids(self, env: str) -> set[str]:
        """Task ids served by at least one live worker."""


class RunWrites(StoreBase):
    """Changing runs from outside a worker: triggering, cancelling, queues, tokens, and the
    request idempotency of the HTTP API."""

    @abc.abstractmethod
    def trigger(self, runs: Sequence[NewRun]) -> list[TriggerResult]:
        """Insert runs in one transaction, honouring idempotency keys."""

    @abc.abstractmethod
    def trigger_once(
        self, env: str, request_key: str, runs: Sequence[NewRun]
    ) -> tuple[list[TriggerResult], bool]:
        """Trigger unless a request with this key already did (then return its runs)."""

    @abc.abstractmethod
    def cancel(self, env: str, run_id: str) -> tuple[Run, list[str]]:
        """Cancel a run (and its waiting children); return it and the runs that ended now."""

    @abc.abstractmethod
    def update_queue(
        self,
        env: str,
        name: str,
        *,
        paused: bool | None = None,
        concurrency_limit: int | bool | None = False,
    ) -> QueueRow:
        """Pause/resume or set the limit (None removes it; False leaves it)."""

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
        buttons: str | None = None,
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
    def waitpoint_env(self, waitpoint_id: str) -> str | None:
        """The environment a waitpoint belongs to (for signed callback URLs)."""

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


class Settings(StoreBase):
    """The server's settings, such as the secret that signs waitpoint callback URLs."""

    @abc.abstractmethod
    def get_setting(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_setting_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless a value exists; return the stored one."""


class WorkerStore(RunReads, RunWrites, TaskDefs, Settings, RunTraces, VersionStore):
    """What a worker needs: its row, lease and life lock, claims and fenced commits, its
    tasks and queues, and the end hooks due (plus reads, and tokens its runs create)."""

    @abc.abstractmethod
    def register_worker(self, info: WorkerInfo) -> None: ...

    @abc.abstractmethod
    def heartbeat(self, worker_id: str, lease_seconds: float) -> Heartbeat: ...

    @abc.abstractmethod
    def stop_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    def acquire_life_lock(self, worker_id: str) -> tuple[LifeLock, int | None, str | None]:
        """Take the lock a worker holds for its whole life: (lock, lock_key, lock_path)."""

    @abc.abstractmethod
    def reap_worker(self, worker_id: str) -> int:
        """Declare a worker dead and re-queue its runs now; how many runs."""

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
        offer: bool = False,
    ) -> tuple[list[bool], list[Claim]]:
        """``apply(ops)`` then ``claim(limit)`` in the same transaction: the slots the
        batch gives back are taken again under one commit. ``limit`` 0 claims nothing.

        ``offer``: the worker hears hand-overs (``take_handovers``); a claim that comes
        back short then offers to take one run straight from a trigger, where the
        backend can (PostgreSQL). Any claim takes back an offer made before, and
        returns the run a trigger handed over on it, if any, among its claims.

        ``reserve``: (queue, concurrency key) -> how many more runs to claim DEQUEUED,
        without a slot, for keys whose limit is full: the worker starts one the moment a
        run of that key ends there (``StartDequeued``). Only queues with a concurrency
        limit and no rate limit reserve. Claims of reserved runs have status DEQUEUED."""

    @abc.abstractmethod
    def declare_queues(self, env: str, specs: Sequence[QueueSpec]) -> None: ...

    @abc.abstractmethod
    def take_hooks_due(self, env: str, task_ids: Sequence[str]) -> list[Run]:
        """Runs that ended outside a worker and whose end hooks have not run yet."""

    @abc.abstractmethod
    def take_ended_elsewhere(
        self, env: str, task_ids: Sequence[str], version: str | None
    ) -> list[Run]:
        """Runs of ``task_ids`` (tasks with no end hooks) that ended outside a worker and
        that no worker has seen end yet, locked to ``version`` or never started; each is
        returned once, to one worker, for its metrics and traces."""


class AccessStore(Settings):
    """Who may call the server: secret keys (their SHA-256) and dashboard logins (the
    SHA-256 of a session id, until logout or expiry)."""

    @abc.abstractmethod
    def create_api_key(self, key_id: str, env: str, prefix: str, key_hash: str) -> None: ...

    @abc.abstractmethod
    def find_api_key(self, key_hash: str) -> ApiKeyMatch | None: ...

    @abc.abstractmethod
    def list_api_keys(self, env: str | None = None) -> list[ApiKeyRow]: ...

    @abc.abstractmethod
    def revoke_api_key(self, key_id_or_prefix: str) -> int: ...

    @abc.abstractmethod
    def create_dashboard_session(self, id_hash: str, expires_at: float) -> None:
        """Keep a login (and forget expired ones)."""

    @abc.abstractmethod
    def dashboard_session_alive(self, id_hash: str) -> bool: ...

    @abc.abstractmethod
    def end_dashboard_session(self, id_hash: str) -> None: ...


class ApiStore(RunReads, RunWrites, TaskDefs, AccessStore, BulkStore, AlertStore, ErrorStore,
               VersionStore, GroupTriggerStore):
    """What the HTTP API needs: reading and changing runs (one at a time or in bulk),
    building them against published task definitions, and signing waitpoint callback URLs
    with its settings; alert rules and error groups."""


class ScheduleStore(TaskDefs):
    """Cron schedules: ``outlast/_schedule_crud.py`` and ``_schedule_firing.py`` compute
    the slots; the store keeps them."""

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
    def schedule_slots(self, schedule_id: str, limit: int = 50) -> list[ScheduleSlot]:
        """The latest fired slots: slot, run_id, fired_at; newest first."""


class SchedulerStore(ScheduleStore, AlertStore, RetentionStore):
    """What the scheduler loop needs: the tick, reaping, firing schedules, forgetting old
    request keys and fired slots, pruning finished runs (``RetentionStore``)."""

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
    def forget_old_requests(self, older_than: float = 24 * 3600.0) -> None: ...

    @abc.abstractmethod
    def prune_schedule_slots(self, older_than: float = 7 * 24 * 3600.0) -> int:
        """Forget fired slots older than this many seconds (their schedules moved on)."""


class DashboardReads(StoreBase):
    """The dashboard's summaries: environments, duration percentiles, per-key queue depth.
    Read-only and off the hot path."""

    @abc.abstractmethod
    def known_envs(self) -> list[str]:
        """Environment names seen in queues, tasks, workers and secret keys."""

    @abc.abstractmethod
    def duration_percentiles(self, env: str, since: float) -> dict[str, TaskDurations]:
        """Per task: how many runs created since ``since`` started and finished, and
        their median and 95th percentile seconds."""

    @abc.abstractmethod
    def queue_names(self, env: str) -> list[str]:
        """The environment's queue names (without the per-queue counts of list_queues)."""

    @abc.abstractmethod
    def queued_by_key(self, env: str, queue: str, limit: int = 50) -> dict[str, int]:
        """Queued runs per concurrency key ('' for runs without one), largest first."""


class DashboardStore(ApiStore, ScheduleStore, DashboardReads, UsageStore, RetentionStore):
    """What the dashboard needs: what the API does, schedules, and its summaries; never
    a worker's calls or the tick."""


class Store(
    WorkerStore, DashboardStore, SchedulerStore, AppTransactionStore, ObservabilityStore,
    EventStore, UsageRollups, WebhookStore,
):
    """The database behind outlast, every role in one: ``open_store`` returns it. One
    instance per process; thread-safe."""

ROLES: tuple[type[StoreBase], ...] = (
    StoreBase,
    TaskDefs,
    Settings,
    RunReads,
    RunWrites,
    WorkerStore,
    ApiStore,
    ScheduleStore,
    SchedulerStore,
    AccessStore,
    DashboardReads,
    DashboardStore,
)

__all__ = [
    "ROLES",
    "AccessStore",
    "ApiKeyMatch",
    "ApiKeyRow",
    "ApiStore",
    "Claim",
    "DashboardReads",
    "DashboardStore",
    "EndSegment",
    "Handover",
    "Heartbeat",
    "LifeLock",
    "LogLine",
    "NewRun",
    "Op",
    "QueueListing",
    "QueueRow",
    "QueueSpec",
    "QueueState",
    "RunReads",
    "RunWrites",
    "Schedule",
    "ScheduleFire",
    "ScheduleSlot",
    "ScheduleStore",
    "SchedulerStore",
    "SetMetadata",
    "Settings",
    "StartDequeued",
    "StartWait",
    "StepDone",
    "Store",
    "StoreBase",
    "TaskDef",
    "TaskDefs",
    "TaskDurations",
    "TickReport",
    "TriggerRequest",
    "TriggerResult",
    "Waitpoint",
    "WaitpointState",
    "WorkerInfo",
    "WorkerRow",
    "WorkerStore",
]
