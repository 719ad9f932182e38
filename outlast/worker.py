"""The worker: claims runs in batches, executes them, commits their outcomes in groups.

One asyncio loop per worker process. Async tasks run on the loop, sync tasks in threads.
Every outcome goes through the ``Committer``, which coalesces the operations of all
concurrently running runs into one transaction per flush; task code and callers hear of
an outcome only after its transaction committed.

Liveness: the worker holds a life lock (PostgreSQL advisory lock / a file lock beside the
SQLite file) and a lease on its row, renewed by heartbeats from a thread of its own (see
``_heartbeat``). Its runs carry the lease epoch they were claimed under; a commit for a
run this worker no longer holds is refused (C4). Peers that notice the lock free re-queue
its runs at once (C9); the lease is the fallback for a worker that is alive but cut off.
A worker told it is no longer alive, or whose life lock is gone, stops claiming, drops
its attempts and registers a new identity before it claims again (C10).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import os
import random
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import _outcome, _schedules, _serde
from ._config import settings
from ._errors import (
    AbortRun,
    NonDeterminismError,
    OutlastError,
    SerializationError,
    UnknownTask,
    ValidationError,
)
from ._heartbeat import Beat, HeartbeatThread, beat_once
from ._ids import new_id
from ._signals import LeaseLost
from ._threads import RunThread, run_in_thread
from ._watchdog import LoopTimeout, Watchdog
from .durable import RunContext, _current
from .runs import Run, RunStatus
from .scheduler import Scheduler
from .store.base import (
    Claim,
    EndSegment,
    Heartbeat,
    LifeLock,
    LogLine,
    Op,
    SetMetadata,
    StartDequeued,
    StartWait,
    StepDone,
    Store,
    WorkerInfo,
)
from .tasks import REGISTRY, Task

log = logging.getLogger(__name__)

_SETTLE_TURNS = 6
_SHORT_RUN = 0.05  # seconds: runs averaging less are worth claiming ahead
_HOLD_SECONDS = 0.1  # of work, at most, held ready beyond the free slots
_HAND_OVER_RUN = 1.0  # seconds: runs averaging less get successors held DEQUEUED

_NOT_RETRYABLE = (AbortRun, NonDeterminismError, SerializationError, ValidationError, UnknownTask)


class Claimer(Protocol):
    """Who the committer claims for (the worker): claims ride on commit batches."""

    def claim_limit(self, ops: Sequence[Op]) -> int:
        """Free slots once the runs this batch ends have left; 0 claims nothing."""

    def claim_target(self) -> tuple[str, Mapping[str, Sequence[str]]]:
        """The environment and queues (queue -> task ids) to claim from; in a thread."""

    def reservations(self) -> Mapping[tuple[str, str], int]:
        """(queue, concurrency key) -> runs to claim DEQUEUED, to hand slots over to."""

    def claimed(self, claims: list[Claim], limit: int) -> None:
        """Start the runs a batch claimed (on the loop, before the next batch)."""


class Committer:
    """Group commit: every op submitted while a flush is in flight goes in the next one.

    With a ``claimer``, a flush that ends runs (or that a claim was asked for) also claims
    their replacements in the same transaction, so a finished run's slot is refilled
    under the commit that frees it; all claims go through here, one at a time, so they
    never overlap and over-fill the worker."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        max_batch: int = 1000,
        claimer: Claimer | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.max_batch = max_batch
        self.claimer = claimer
        self._items: list[tuple[Op, asyncio.Future[bool] | None]] = []
        self._claim_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="outlast-committer")

    async def submit(self, op: Op) -> bool:
        """Queue ``op`` and wait until it is committed; False if it was fenced out."""
        return await self.enqueue(op)

    def enqueue(self, op: Op) -> asyncio.Future[bool]:
        """Queue ``op`` now; the future says whether it committed (False: fenced out)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._add(op, fut)
        return fut

    def submit_nowait(self, op: Op) -> None:
        """Queue ``op`` (a log line, a metadata change) without waiting for it."""
        self._add(op, None)

    async def claim(self) -> None:
        """Claim with the next flush (now, if none is in flight) and wait for it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claim_waiters.append(fut)
        self._idle.clear()
        self._wake.set()
        await fut

    def _add(self, op: Op, fut: asyncio.Future[bool] | None) -> None:
        self._items.append((op, fut))
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                # Let runs that are ready to go on the loop (just claimed, or just told
                # their end committed) take their steps first: their ops join this batch
                # and the slots they leave are claimed in it, instead of waiting a flush.
                # A run takes a few loop turns from start to its end op; a few yields cost
                # microseconds against a flush's milliseconds.
                for _ in range(_SETTLE_TURNS):
                    await asyncio.sleep(0)
                if not self._items and not self._claim_waiters:
                    break
                batch = self._items[: self.max_batch]
                del self._items[: self.max_batch]
                waiters, self._claim_waiters = self._claim_waiters, []
                ops = [op for op, _ in batch]
                limit = 0
                reserve: Mapping[tuple[str, str], int] = {}
                if self.claimer is not None and (
                    waiters or any(isinstance(op, EndSegment) for op in ops)
                ):
                    limit = self.claimer.claim_limit(ops)
                    reserve = self.claimer.reservations()
                ok, claims = await self._apply(ops, limit, reserve)
                self.batches += 1
                self.ops += len(batch)
                for (_, fut), good in zip(batch, ok, strict=True):
                    if fut is not None and not fut.done():
                        fut.set_result(good)
                if self.claimer is not None and (limit > 0 or reserve):
                    self.claimer.claimed(claims, limit)
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
            if not self._items and not self._claim_waiters:
                self._idle.set()

    async def _apply(
        self, ops: list[Op], limit: int, reserve: Mapping[tuple[str, str], int]
    ) -> tuple[list[bool], list[Claim]]:
        try:
            return await self._commit(ops, limit, reserve)
        except _Refused as refused:
            log.warning(
                "the database refused a batch of %d operations (%s); finding the ones at fault",
                len(ops),
                refused.cause,
            )
        ok = await self._split(ops)
        claims: list[Claim] = []
        if limit > 0 or reserve:
            try:
                _, claims = await self._commit([], limit, reserve)
            except _Refused:
                log.exception("a claim was refused on its data; claiming nothing now")
        return ok, claims

    async def _commit(
        self, ops: list[Op], limit: int, reserve: Mapping[tuple[str, str], int]
    ) -> tuple[list[bool], list[Claim]]:
        """Commit ``ops`` (and claim, with a limit or reservations), retrying while the
        database is unreachable; _Refused if it refused the batch's data."""
        claimer = self.claimer

        def commit() -> tuple[list[bool], list[Claim]]:
            if (limit > 0 or reserve) and claimer is not None:
                env, serves = claimer.claim_target()
                return self.store.apply_and_claim(
                    self.worker_id, ops, env, serves, limit, reserve
                )
            return self.store.apply(self.worker_id, ops), []

        delay = 0.05
        while True:
            try:
                return await asyncio.to_thread(commit)
            except Exception as exc:
                if self.store.refused_data(exc):
                    raise _Refused(exc) from exc
                # The database is unreachable or the transaction failed: nothing of this
                # batch is acknowledged; try the same batch again. Replaying it is safe:
                # journal writes are upserts and segment ends are fenced by status.
                log.exception("commit of %d operations failed; retrying", len(ops))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _split(self, ops: list[Op]) -> list[bool]:
        """Commit a batch the database refused on its data, in halves and in order, down
        to the operations at fault: each of those fails its run, the rest commit. A run's
        later operations are then fenced out by its final status, like a lost lease's."""
        if len(ops) == 1:
            return [await self._alone(ops[0])]
        half = len(ops) // 2
        ok: list[bool] = []
        for part in (ops[:half], ops[half:]):
            if len(part) == 1:
                ok.append(await self._alone(part[0]))
                continue
            try:
                ok += (await self._commit(part, 0, {}))[0]
            except _Refused:
                ok += await self._split(part)
        return ok

    async def _alone(self, op: Op) -> bool:
        """Commit ``op`` by itself; if the database refuses that too, fail its run:
        retrying would stop every run of this worker behind it (C10). False: ``op`` did
        not commit, and the run's code stops as if its lease were lost."""
        try:
            return (await self._commit([op], 0, {}))[0][0]
        except _Refused as refused:
            reason = str(refused.cause).encode("ascii", "backslashreplace").decode()
        what = _described(op)
        log.error(
            "run %s: the database refused its %s (%s); the run fails",
            op.run_id,
            what,
            reason,
            extra={"run_id": op.run_id},
        )
        end = EndSegment(
            run_id=op.run_id,
            epoch=op.epoch,
            outcome="failed",
            error=_error_json("unstorable_data", f"the run's {what} could not be stored: {reason}"),
        )
        try:
            await self._commit([end], 0, {})
        except _Refused:  # pragma: no cover - the failure is ASCII text of ours
            log.exception("run %s: its failure could not be stored either", op.run_id)
        return False


class _Refused(Exception):
    """The database refused a batch's data: the same batch would be refused again."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _described(op: Op) -> str:
    """What ``op`` stores, for an error message (ASCII: it may quote a step name)."""
    if isinstance(op, StepDone | StartWait):
        return f"step {op.key!a}"
    if isinstance(op, LogLine):
        return "log line"
    if isinstance(op, SetMetadata):
        return "metadata"
    if isinstance(op, EndSegment):
        return "output" if op.outcome == "completed" else f"end ({op.outcome})"
    return type(op).__name__


@dataclass(frozen=True)
class HookEvent:
    """What a lifecycle hook receives."""

    name: str  # start | success | failure | complete | wait | resume | end
    run_id: str
    task_id: str
    attempt: int
    payload: Any
    status: RunStatus | None = None
    output: Any = None
    error: dict[str, Any] | None = None


class Worker:
    """Runs tasks. ``await Worker(store).run()`` until stopped; tests use
    ``run_until_idle()`` with a fake clock instead of sleeping."""

    def __init__(
        self,
        store: Store,
        *,
        tasks: Mapping[str, Task[Any, Any]] | None = None,
        env: str | None = None,
        concurrency: int = 10,
        prefetch: int | None = None,
        lease_seconds: float = 30.0,
        heartbeat_interval: float = 1.0,
        poll_interval: float | None = None,
        scheduler: bool = True,
        tick_interval: float = 0.25,
        shutdown_grace: float = 30.0,
        life_lock: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        self.store = store
        self.tasks: Mapping[str, Task[Any, Any]] = tasks if tasks is not None else REGISTRY
        self.env = env or settings().env
        self.concurrency = concurrency
        # Runs claimed ahead of free slots, held ready while recent runs are short (see
        # _room): a drain of quick runs then commits in bigger batches.
        self.prefetch = 10 * concurrency if prefetch is None else prefetch
        self._ready: collections.deque[Claim] = collections.deque()
        # Runs held DEQUEUED per (queue, concurrency key) whose slots are full: one starts
        # the moment a run of that key ends here, in the slot it leaves (see _hand_over).
        self._reserved: dict[tuple[str, str], collections.deque[Claim]] = {}
        self._reserve_keys: set[tuple[str, str]] = set()  # keys whose runs ended lately
        self._limited: set[str] = set()  # queues with a concurrency limit, no rate limit
        self._finishing: set[str] = set()  # active runs whose code is done, end committing
        self._avg_seconds: float | None = None
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval
        is_pg = type(store).__name__.startswith("Postgres")
        self.poll_interval = poll_interval or (0.5 if is_pg else 0.05)
        self.scheduler = scheduler
        self.tick_interval = tick_interval
        self.shutdown_grace = shutdown_grace
        self.use_life_lock = life_lock
        self.rng = rng or random.Random()
        self.id = new_id("worker")
        self.active: dict[str, RunContext] = {}
        self._running: set[asyncio.Task[None]] = set()
        # Threads of runs' sync code still running after their attempt ended (a timeout,
        # a cancel): each keeps its slot until it returns (see _threads and _outlive).
        self._overrun: set[RunThread] = set()
        self._watchdog = Watchdog(self.active.values)
        self.executed = 0
        self._lock: LifeLock | None = None
        self._committer: Committer | None = None
        self._started = False
        self._stopping = False
        self._background: list[asyncio.Task[None]] = []
        self._slot_freed: asyncio.Event | None = None
        self._serves: dict[str, list[str]] = {}
        self._serves_at = -1e9
        self._waiter: asyncio.Future[None] | None = None
        self._dry = True  # the last claim found fewer runs than it had room for
        self.claimed_total = 0
        self._scheduler = Scheduler(store)
        self._heart: HeartbeatThread | None = None
        # Lost: the current identity is over (declared dead, or its life lock gone); no
        # claim until a new one is registered. Each loss starts a new generation, so a
        # claim that was in flight across it is never started.
        self._lost = False
        self._generation = 0
        self._claim_generation = 0
        self._recovery: asyncio.Task[None] | None = None
        self._found: asyncio.Event | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def committer(self) -> Committer:
        assert self._committer is not None, "worker not started"
        return self._committer

    async def start(self, *, background: bool = True) -> None:
        if self._started:
            return
        # Refuse to run against a schema this code does not know, embedded or not.
        await asyncio.to_thread(self.store.check_schema)
        self._started = True
        self._slot_freed = asyncio.Event()
        self._found = asyncio.Event()
        self._found.set()
        await asyncio.to_thread(self._register)
        self._committer = Committer(self.store, self.id, claimer=self)
        self.committer.start()
        if background:
            self._heart = HeartbeatThread(
                self.store,
                asyncio.get_running_loop(),
                self._on_beat,
                lease_seconds=self.lease_seconds,
                interval=self.heartbeat_interval,
            )
            self._heart.start(self.id, self._lock)
            if self.scheduler:
                self._background.append(asyncio.create_task(self._scheduler_loop()))
        log.info(
            "worker %s started: %d tasks, concurrency %d, env %s",
            self.id,
            len(self.tasks),
            self.concurrency,
            self.env,
            extra={"worker_id": self.id},
        )

    def _register(self) -> None:
        # First, so a bad cron= stops the start before anything is written.
        _schedules.sync_declarative(self.store, self.env, self.tasks)
        defs = [t.definition() for t in self.tasks.values()]
        self.store.publish_tasks(self.env, defs)
        specs = {t.queue.name: t.queue.spec() for t in self.tasks.values()}
        self.store.declare_queues(self.env, list(specs.values()))
        self._register_identity()

    def _register_identity(self) -> None:
        """Take a life lock for ``self.id`` and register the worker row under it; the
        lock is let go again if the row cannot be written."""
        key = path = None
        self._lock = None
        if self.use_life_lock:
            self._lock, key, path = self.store.acquire_life_lock(self.id)
        try:
            self._register_row(key, path)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            raise

    def _register_row(self, key: int | None, path: str | None) -> None:
        self.store.register_worker(
            WorkerInfo(
                id=self.id,
                env=self.env,
                host=socket.gethostname(),
                pid=os.getpid(),
                concurrency=self.concurrency,
                tasks=sorted(self.tasks),
                lease_seconds=self.lease_seconds,
                lock_key=key,
                lock_path=path,
            )
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Claim and execute until ``stop`` is set, then shut down gracefully."""
        await self.start()
        stop = stop or asyncio.Event()
        try:
            await self._claim_loop(stop)
        finally:
            await self.shutdown()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop claiming; let running attempts finish within ``grace`` seconds, then hand
        the rest back to the queue without spending an attempt."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        while self._ready:
            claim = self._ready.popleft()
            self.committer.submit_nowait(_handback(claim))
        self._hand_back_held()
        grace = self.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for ctx in list(self.active.values()):
            ctx.end("handback")
        while self.active:
            await asyncio.sleep(0.01)
        await self.committer.close()
        if self._heart is not None:
            await asyncio.to_thread(self._heart.stop)
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(BaseException):
                await self._recovery
        for t in self._background:
            t.cancel()
        for t in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._waiter is not None:
            with contextlib.suppress(Exception):
                await self._waiter
        await asyncio.to_thread(self.store.stop_worker, self.id)
        if self._lock is not None:
            self._lock.release()
        log.info("worker %s stopped", self.id, extra={"worker_id": self.id})

    # -- claiming -------------------------------------------------------------------------
    def _queues_served(self) -> dict[str, list[str]]:
        """Queue -> task ids. Runs triggered onto a queue no task declares are served by
        any of our tasks, so the queue list is refreshed from the store now and then."""
        now = time.monotonic()
        if now - self._serves_at > 5.0:
            serves: dict[str, list[str]] = {}
            for t in self.tasks.values():
                serves.setdefault(t.queue.name, []).append(t.id)
            every = sorted(self.tasks)
            limited = set()
            with contextlib.suppress(Exception):
                for q in self.store.list_queues(self.env):
                    serves.setdefault(q["name"], every)
                    if q["concurrency_limit"] is not None and not q["rate_limit_count"]:
                        limited.add(q["name"])
            self._serves = serves
            self._limited = limited
            self._serves_at = now
        return self._serves

    # Claims ride on the committer's batches (see Committer): these three are its Claimer.
    def claim_limit(self, ops: Sequence[Op]) -> int:
        if self._stopping or self._lost:
            return 0
        self._claim_generation = self._generation
        ending = {
            op.run_id
            for op in ops
            if isinstance(op, EndSegment)
            and op.run_id in self.active
            and op.run_id not in self._finishing
        }
        return self._room() + len(ending)

    def claim_target(self) -> tuple[str, Mapping[str, Sequence[str]]]:
        return self.env, self._queues_served()

    def reservations(self) -> Mapping[tuple[str, str], int]:
        """For keys whose runs ended since the last claim: enough runs held DEQUEUED to
        hand over about 0.1 s of work (as ``_room`` holds ready runs), at most one per
        run of the key executing here, and one for a key with none executing (the claim
        in the same commit may start one; if not, ``_trim_reserved`` gives it back). Runs
        averaging a second or more get none: a flush is small against them, and a held
        run might have started elsewhere."""
        keys, self._reserve_keys = self._reserve_keys, set()
        avg = self._avg_seconds
        if self._lost:
            return {}
        self._claim_generation = self._generation
        if self._stopping or avg is None or avg >= _HAND_OVER_RUN or not keys:
            return {}
        executing = dict.fromkeys(keys, 0)
        for ctx in self.active.values():
            k = _key_of(ctx.run)
            if k in executing and ctx.run.id not in self._finishing:
                executing[k] += 1
        want = {}
        for k, n in executing.items():
            held = len(self._reserved.get(k, ()))
            more = min(max(n, 1), max(1, int(n * _HOLD_SECONDS / max(avg, 1e-4)))) - held
            if more > 0:
                want[k] = more
        return want

    def claimed(self, claims: list[Claim], limit: int) -> None:
        if self._lost or self._claim_generation != self._generation:
            # Claimed across a loss of identity: never started (C4). Handed back under
            # the current identity; if they were taken under the lost one, that is fenced
            # out and the reaper requeues them (C10).
            for c in claims:
                self.committer.submit_nowait(_handback(c))
            return
        ready = [c for c in claims if c.run.status != RunStatus.DEQUEUED]
        if limit > 0:
            self._dry = len(ready) < limit
        self.claimed_total += len(ready)
        self._ready.extend(ready)
        self._start_ready()
        keys = set()
        for c in claims:
            if c.run.status == RunStatus.DEQUEUED:
                k = _key_of(c.run)
                self._reserved.setdefault(k, collections.deque()).append(c)
                keys.add(k)
        for k in keys:
            self._trim_reserved(k)

    def _room(self) -> int:
        """How many runs to claim now: the free slots, plus some held ready while recent
        runs took under 50 ms on average: at most ``prefetch``, and at most about 0.1 s
        of work at that average, so a held run never waits long. Long runs get none
        held: a run waiting here behind a long one could have started elsewhere."""
        avg = self._avg_seconds
        ahead = 0
        if avg is not None and avg < _SHORT_RUN:
            ahead = min(self.prefetch, int(self.concurrency * _HOLD_SECONDS / max(avg, 1e-4)))
        return self.concurrency + ahead - self._busy() - len(self._ready)

    def _busy(self) -> int:
        """Runs whose code is executing (those only committing their end do not count),
        and threads of sync code that outlived their attempt."""
        return len(self.active) - len(self._finishing) + len(self._overrun)

    def _start_ready(self) -> None:
        while self._ready and self._busy() < self.concurrency and not self._stopping:
            self._launch(self._ready.popleft())

    async def _claim(self) -> int:
        """Claim as many runs as there are free slots; how many were started."""
        before = self.claimed_total
        await self.committer.claim()
        return self.claimed_total - before

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        """Claims when slots are free and there may be work: at start, after a wake-up
        (a notification or the poll), and after a claim that filled every free slot.
        Runs that end free their slots in the commit that ends them, and the committer
        claims again there; this loop covers the rest."""
        assert self._slot_freed is not None and self._found is not None
        stop_wait = asyncio.create_task(stop.wait())
        woke = True
        try:
            while not stop.is_set():
                if self._lost:  # nothing is claimed before a new identity is registered
                    found = asyncio.create_task(self._found.wait())
                    await asyncio.wait({stop_wait, found}, return_when=asyncio.FIRST_COMPLETED)
                    found.cancel()
                    woke = True
                    continue
                free = self._room()
                if free > 0 and (woke or not self._dry):
                    woke = False
                    await self._claim()
                    if not self._dry:
                        continue
                idle = self._room() > 0
                if idle and self._waiter is not None and self._waiter.done():
                    # Woken while the last claim was in flight: that wake-up may be for
                    # work the claim did not see yet, so claim again before waiting.
                    self._waiter = None
                    woke = True
                    continue
                waits: set[asyncio.Future[Any]] = {stop_wait}
                slot = asyncio.create_task(self._slot_freed.wait())
                waits.add(slot)
                if idle:
                    if self._waiter is None:
                        self._waiter = asyncio.ensure_future(
                            asyncio.to_thread(self.store.wait_for_work, self.poll_interval)
                        )
                    waits.add(self._waiter)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                slot.cancel()
                self._slot_freed.clear()
                if self._waiter is not None and self._waiter.done():
                    self._waiter = None
                    woke = True
        finally:
            stop_wait.cancel()

    async def run_until_idle(self, *, max_seconds: float = 60.0) -> int:
        """Tick, claim and execute until nothing is ready or running; returns the number
        of segments executed. For tests and scripts: no background loops, no sleeping."""
        await self.start(background=False)
        assert self._slot_freed is not None
        before = self.executed
        deadline = time.monotonic() + max_seconds
        beat_at = -1e18
        while time.monotonic() < deadline:
            # Beat and tick on their intervals, not per claim: a drain of thousands of
            # short runs would otherwise spend most of its time on them.
            if time.monotonic() - beat_at >= min(self.heartbeat_interval, self.tick_interval):
                beat_at = time.monotonic()
                await self.beat()
                if self.scheduler:
                    await self.tick()
            free = self._room()
            claimed = await self._claim() if free > 0 else 0
            if not claimed and not self.active and not self._ready:
                await self.committer.flush()  # its commits may claim and start runs
                await self._run_due_hooks()
                if self.scheduler:
                    await self.tick()
                if not self.active and not self._ready and not await self._claim():
                    break
                continue
            if self.active and (not claimed or len(self.active) >= self.concurrency):
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), 0.05)
        return self.executed - before

    async def tick(self) -> None:
        await self._scheduler.tick()

    # -- liveness -------------------------------------------------------------------------
    async def beat(self) -> None:
        """Beat now (renew the lease, check the life lock) and act on the result; after a
        loss, return once a new identity is registered. The heartbeat thread does this
        on its own in a running worker; ``run_until_idle`` and tests call it."""
        beat = await asyncio.to_thread(
            beat_once, self.store, self.id, self._lock, self.lease_seconds
        )
        self._on_beat(beat)
        if self._recovery is not None:
            await asyncio.shield(self._recovery)

    def _on_beat(self, beat: Beat) -> None:
        """A beat's result, on the loop (the heartbeat thread posts it here)."""
        if beat.worker_id != self.id or self._lost:
            return  # a beat of an identity already given up
        if beat.lost:
            if not self._stopping:  # a worker shutting down needs no new identity
                self._lose_identity(lock_gone=beat.lock_lost)
        elif beat.heartbeat is not None:
            self._heard(beat.heartbeat)

    def _heard(self, hb: Heartbeat) -> None:
        """Act on cancellations of runs this worker holds, and paused queues."""
        for run_id in hb.cancel_requested:
            ctx = self.active.get(run_id)
            if ctx is not None:
                ctx.end("cancel")
            self._cancel_ready(run_id)
        if hb.paused_holding:
            # Held, such a run would start when its predecessor ends, however long after
            # the pause that is. (One whose predecessor ended before this beat started.)
            self._hand_back_held(set(hb.paused_holding))

    def _lose_identity(self, *, lock_gone: bool) -> None:
        """Declared dead by a peer (cut off past the lease), or the life lock is gone: stop
        claiming now, drop every attempt, since none may commit any more (C4), and come
        back under a new identity (C10)."""
        log.error(
            "worker %s lost its %s; abandoning %d runs",
            self.id,
            "life lock" if lock_gone else "lease",
            len(self.active),
            extra={"worker_id": self.id},
        )
        assert self._found is not None
        self._lost = True
        self._found.clear()
        self._generation += 1
        self._dry = True
        for ctx in list(self.active.values()):
            ctx.end("lost")
        self._ready.clear()  # claimed under the lost identity: nothing of them may commit
        self._reserved.clear()
        self._recovery = asyncio.create_task(self._recover(self.id, self._lock, lock_gone))

    async def _recover(self, old_id: str, old_lock: LifeLock | None, lock_gone: bool) -> None:
        """Register a new identity, retrying while the database is away. A worker whose
        lock went while its row still says alive first declares itself dead, so its runs
        are requeued now rather than when its lease lapses."""
        delay = 0.1
        while True:
            try:
                if lock_gone:
                    await asyncio.to_thread(self.store.reap_worker, old_id)
                    lock_gone = False
                if old_lock is not None:
                    old_lock.release()
                    old_lock = None
                self.id = new_id("worker")
                await asyncio.to_thread(self._register_identity)
                break
            except Exception as exc:
                log.warning("worker %s cannot register again yet: %s", old_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.committer.worker_id = self.id
        self._serves_at = -1e9
        if self._heart is not None:
            self._heart.serve(self.id, self._lock)
        log.info("worker %s continues as %s", old_id, self.id, extra={"worker_id": self.id})
        self._lost = False
        self._recovery = None
        assert self._found is not None
        self._found.set()

    def _hand_back_held(self, queues: set[str] | None = None) -> None:
        """Runs held DEQUEUED (in ``queues``, or all of them) go back to their places in
        their queues, attempt unspent."""
        for k in [k for k in self._reserved if queues is None or k[0] in queues]:
            for claim in self._reserved.pop(k):
                self.committer.submit_nowait(_handback(claim))

    def _cancel_ready(self, run_id: str) -> None:
        """A run cancelled while held ready (or DEQUEUED) ends here, never having started."""
        for queue in (self._ready, *self._reserved.values()):
            for claim in list(queue):
                if claim.run.id != run_id:
                    continue
                queue.remove(claim)
                self._reserved = {k: held for k, held in self._reserved.items() if held}
                self.committer.submit_nowait(
                    EndSegment(
                        run_id=run_id,
                        epoch=claim.epoch,
                        outcome="canceled",
                        error=_error_json("canceled", "the run was canceled"),
                    )
                )

    async def _scheduler_loop(self) -> None:
        last_hooks = 0.0
        while True:
            try:
                await self.tick()
                if time.monotonic() - last_hooks > 1.0:
                    last_hooks = time.monotonic()
                    await self._run_due_hooks()
            except Exception:
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.tick_interval)

    # -- execution ------------------------------------------------------------------------
    def _launch(self, claim: Claim) -> None:
        ctx = RunContext(
            claim,
            self.committer,
            self.store,
            inplace_sleep_seconds=settings().inplace_sleep_seconds,
        )
        self.active[claim.run.id] = ctx
        self._finishing.discard(claim.run.id)  # its last attempt's, if still committing
        self._watchdog.arm()
        # Keep a reference: the loop holds tasks only weakly.
        running = asyncio.create_task(self._execute(ctx), name=f"outlast-run-{claim.run.id}")
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    async def _execute(self, ctx: RunContext) -> None:
        run = ctx.run
        task = self.tasks.get(run.task_id)
        began = time.monotonic()
        try:
            if task is None:
                err = UnknownTask(f"this worker has no task {run.task_id!r}")
                await self.committer.submit(self._failed(ctx, None, err))
                return
            await self._execute_task(ctx, task)
        except LoopTimeout:
            # The watchdog's interruption fired here, in the worker's code, as the run's
            # code let go of the loop (see _watchdog): the timeout it set is still its end.
            if run.id not in self._finishing and ctx.end_reason is not None:
                op = self._unwound(ctx)
                if op is not None:
                    self._finishing.add(run.id)
                    self.committer.submit_nowait(op)
        except Exception:
            log.exception("run %s: executor error", run.id, extra={"run_id": run.id})
        finally:
            took = time.monotonic() - began
            avg = self._avg_seconds
            self._avg_seconds = took if avg is None else 0.8 * avg + 0.2 * took
            # A run retried at once may be claimed and started again while this attempt's
            # end hooks still run: the entries are the new attempt's then.
            if self.active.get(run.id) is ctx:
                del self.active[run.id]
                self._finishing.discard(run.id)
            self.executed += 1
            self._start_ready()
            self._slot_signal()

    async def _execute_task(self, ctx: RunContext, task: Task[Any, Any]) -> None:
        run = ctx.run
        resumed = any(e.attempt == run.attempt for e in ctx.journal.values())
        # The task's code runs in this asyncio task, not in one of its own: a second task
        # per attempt was a creation, a context copy and a wake-up more on the loop for
        # every run, and a fan-out's slots pay each microsecond there about ten times
        # (bench/README.md#limits). ctx.end cancels this task only while ctx.main_task is
        # set, that is while the task's code runs, so the commit below is never cancelled.
        me = asyncio.current_task()
        assert me is not None
        token = _current.set(ctx)
        timer = None
        if run.max_duration is not None:
            remaining = max(0.0, run.max_duration - run.exec_seconds)
            ctx.deadline = time.monotonic() + remaining  # for the watchdog (_watchdog)
            timer = asyncio.get_running_loop().call_later(remaining, ctx.end, "timeout")
        op: EndSegment | None
        output: Any = None
        try:
            if ctx.end_reason is not None:  # ended (cancelled, handed back) before it began
                raise asyncio.CancelledError
            ctx.main_task = me
            output_text, output = await self._attempt(ctx, task, resumed)
            op = EndSegment(run_id=run.id, epoch=ctx.epoch, outcome="completed", output=output_text)
        except BaseException as exc:  # whatever the code raised, it ends the attempt here
            op = self._ended_by(ctx, task, exc)
        finally:
            ctx.main_task = None
            _current.reset(token)
            if timer is not None:
                timer.cancel()
        if me.cancelling():
            # The attempt's unwinding ends here, and what it was unwound for is committed
            # below. A cancel the code asked for and never awaited would still be pending
            # and fire at the commit's await: take it now. And this task is not left
            # counted as cancelling, a count asyncio's structured helpers (timeout,
            # TaskGroup) read in the end hooks run here next.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            while me.uncancel():
                pass
        if ctx.end_reason is not None and op is not None and op.outcome == "completed":
            # The code caught the platform's unwinding and returned: the platform's reason
            # (a cancel, max_duration) still decides the outcome.
            op = self._unwound(ctx)
        self._outlive(ctx)
        if op is None:
            log.warning("run %s: lease lost; nothing committed", run.id, extra={"run_id": run.id})
            return
        # The task's code is done: its slot goes to the next run while this end commits,
        # so quick runs keep the worker busy during the flush instead of idling for it.
        self._finishing.add(run.id)
        committing = self.committer.enqueue(op)
        self._hand_over(run)
        self._start_ready()
        self._slot_signal()
        committed = await committing
        if committed:
            await self._after(ctx, task, op, output)

    def _slot_signal(self) -> None:
        """Tell the claim loop a slot was freed, when that can change what it does: its
        last claim filled every slot it had (claim again), or it waits with no poll in
        flight (start one). A dry claim loop already waiting on the poll would only wake,
        find nothing to do and wait again, once per run ended (every couple of
        milliseconds in a fan-out). Skipping those wake-ups saves loop work; on its own
        it moved no fan-out figure beyond the noise."""
        if self._slot_freed is not None and (not self._dry or self._waiter is None):
            self._slot_freed.set()

    def _hand_over(self, run: Run) -> None:
        """Start the next run held DEQUEUED for the queue and key of ``run``, whose end
        was just queued, in the slot that end gives back. Its start is queued right
        after that end, so both commit in one batch, before any op of its own; its code
        runs now instead of a flush later. Should the worker die first, the dead
        worker's DEQUEUED runs count a lost attempt, like its EXECUTING ones (C9)."""
        k = _key_of(run)
        if run.queue in self._limited:
            self._reserve_keys.add(k)
        held = self._reserved.get(k)
        if held and not self._stopping:
            claim = held.popleft()
            self.committer.submit_nowait(StartDequeued(run_id=claim.run.id, epoch=claim.epoch))
            self._launch(claim)
            # One run of the key left and one started: no more held than before, so
            # nothing to trim (its scan of the active runs is per hand-over otherwise).
            if not held:
                del self._reserved[k]
            return
        self._trim_reserved(k)

    def _trim_reserved(self, k: tuple[str, str]) -> None:
        """Hand back runs held for key ``k`` beyond its runs executing here: each of
        those hands over one when it ends, and a held run with none left would wait for
        nothing. The newest go back, to their places in the queue."""
        held = self._reserved.get(k)
        if not held:
            self._reserved.pop(k, None)
            return
        executing = sum(
            1
            for ctx in self.active.values()
            if ctx.run.id not in self._finishing and _key_of(ctx.run) == k
        ) + sum(1 for c in self._ready if _key_of(c.run) == k)
        while len(held) > executing:
            self.committer.submit_nowait(_handback(held.pop()))
        if not held:
            del self._reserved[k]

    async def _attempt(
        self, ctx: RunContext, task: Task[Any, Any], resumed: bool
    ) -> tuple[str, Any]:
        payload = _serde.validate(ctx.run.payload, task.payload_type, what="payload")
        if task.hooks:
            await self._hook(task, "resume" if resumed else "start", ctx.run, payload)
        if task.is_async:
            result = await task.fn(payload)
        else:
            result = await run_in_thread(ctx.threads, f"outlast-{ctx.run.id}", task.fn, payload)
        return _serde.to_json(result, task.return_type), result

    def _ended_by(
        self, ctx: RunContext, task: Task[Any, Any], exc: BaseException
    ) -> EndSegment | None:
        """What ends an attempt whose code raised ``exc``. The platform's unwinding (a
        suspend, a cancel, a timeout, a hand-back, a lost lease) is told by the reason it
        set before unwinding, not by the exception's type: task code may raise a
        CancelledError of its own, or turn the platform's into anything on its way out.
        Everything else is the code failing, whatever it raised."""
        if ctx.end_reason is not None:
            return self._unwound(ctx)
        if isinstance(exc, LeaseLost):
            return None
        if isinstance(exc, LoopTimeout):
            # The watchdog's interruption, meant for another run, landed in this one's
            # code (see _watchdog): not this run's fault, so back to the queue unspent.
            ctx.end_reason = "handback"
            return self._unwound(ctx)
        return self._failed(ctx, task, exc)

    def _outlive(self, ctx: RunContext) -> None:
        """The attempt is over: stop what it left running. Durable calls its sync code
        started on the loop are cancelled; threads of its sync code still running are told
        to stop (``Stopped``, which pure-Python code sees at its next bytecode) and keep
        their slot until they return, however long that is (a C call, a system call)."""
        for call in list(ctx.side_tasks):
            call.cancel()
        if not ctx.threads:
            return
        log.warning(
            "run %s: %d thread(s) of its sync code still run after its attempt ended; "
            "stopping them; each keeps a slot until it returns",
            ctx.run.id,
            len(ctx.threads),
            extra={"run_id": ctx.run.id},
        )
        for rt in list(ctx.threads):
            rt.stop()
            self._overrun.add(rt)
            rt.on_exit(functools.partial(self._thread_returned, rt))

    def _thread_returned(self, rt: RunThread) -> None:
        self._overrun.discard(rt)
        self._start_ready()
        self._slot_signal()

    def _unwound(self, ctx: RunContext) -> EndSegment | None:
        run, reason = ctx.run, ctx.end_reason
        base: dict[str, Any] = {"run_id": run.id, "epoch": ctx.epoch}
        if reason == "suspend":
            waits = sorted(set(ctx.blocked.values()))
            return EndSegment(
                **base,
                outcome="suspend",
                wait_on=waits,
                exec_seconds=ctx.exec_seconds(),
                wait_reason=_serde.dumps({"waitpoints": waits, "keys": sorted(ctx.blocked)}),
            )
        if reason == "cancel":
            return EndSegment(
                **base, outcome="canceled", error=_error_json("canceled", "the run was canceled")
            )
        if reason == "timeout":
            return EndSegment(
                **base,
                outcome="timed_out",
                error=_error_json(
                    "max_duration_exceeded",
                    f"the run exceeded its max_duration of {run.max_duration} s",
                ),
            )
        if reason == "handback":
            return EndSegment(**base, outcome="handback", exec_seconds=ctx.exec_seconds())
        return None  # lost: nothing may be committed

    def _failed(
        self, ctx: RunContext, task: Task[Any, Any] | None, exc: BaseException
    ) -> EndSegment:
        run = ctx.run
        code = exc.code if isinstance(exc, OutlastError) else "task_error"
        # Never raises, whatever exc is: an error that cannot be written would leave the
        # run EXECUTING with nothing committed.
        error = _serde.dumps(
            {
                "code": code,
                "type": _outcome.type_name(exc),
                "message": _outcome.task_message(exc),
                "traceback": _outcome.formatted_traceback(exc),
            }
        )
        base: dict[str, Any] = {"run_id": run.id, "epoch": ctx.epoch}
        retryable = task is not None and not isinstance(exc, _NOT_RETRYABLE)
        if task is not None and retryable and run.attempt < run.max_attempts:
            delay = task.retry.delay(run.attempt, self.rng)
            log.info(
                "run %s attempt %d failed (%s); retrying in %.1f s",
                run.id,
                run.attempt,
                _outcome.type_name(exc),
                delay,
                extra={"run_id": run.id},
            )
            retry_at = self.store.now() + delay
            return EndSegment(**base, outcome="retry", error=error, retry_at=retry_at)
        return EndSegment(**base, outcome="failed", error=error)

    # -- hooks ----------------------------------------------------------------------------
    async def _after(
        self, ctx: RunContext, task: Task[Any, Any], op: EndSegment, output: Any
    ) -> None:
        if not task.hooks:
            return
        run = ctx.run
        error = _serde.loads(op.error) if op.error else None
        status = {
            "completed": RunStatus.COMPLETED,
            "failed": RunStatus.FAILED,
            "timed_out": RunStatus.TIMED_OUT,
            "canceled": RunStatus.CANCELED,
        }.get(op.outcome)
        if op.outcome == "suspend":
            await self._hook(task, "wait", run, run.payload)
            return
        if status is None:
            return
        if status == RunStatus.COMPLETED:
            await self._hook(task, "success", run, run.payload, status=status, output=output)
        elif status != RunStatus.CANCELED:
            # A cancellation is not a failure; the same rule as _run_due_hooks, so a run
            # cancelled while executing and one cancelled while waiting hear the same.
            await self._hook(task, "failure", run, run.payload, status=status, error=error)
        for name in ("complete", "end"):
            await self._hook(
                task, name, run, run.payload, status=status, output=output, error=error
            )

    async def _run_due_hooks(self) -> None:
        """End hooks of runs that ended outside any worker (cancelled while idle, expired,
        lost with their worker)."""
        with_hooks = [
            t.id for t in self.tasks.values() if {"end", "complete", "failure"} & set(t.hooks)
        ]
        if not with_hooks:
            return
        runs = await asyncio.to_thread(self.store.take_hooks_due, self.env, with_hooks)
        for run in runs:
            task = self.tasks[run.task_id]
            if run.status in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.EXPIRED):
                await self._hook(
                    task, "failure", run, run.payload, status=run.status, error=run.error
                )
            for name in ("complete", "end"):
                await self._hook(task, name, run, run.payload, status=run.status, error=run.error)

    async def _hook(
        self,
        task: Task[Any, Any],
        name: str,
        run: Run,
        payload: Any,
        *,
        status: RunStatus | None = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        for hook in task.hooks.get(name, ()):
            event = HookEvent(
                name, run.id, run.task_id, run.attempt, payload, status, output, error
            )
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                me = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and me is not None and me.cancelling():
                    raise  # the worker's own cancel (a shutdown), not the hook's doing
                # A hook never changes the run's outcome, nor stops the worker, whatever it
                # raises (KeyboardInterrupt, SystemExit included).
                log.exception("run %s: %s hook failed", run.id, name, extra={"run_id": run.id})


def _key_of(run: Run) -> tuple[str, str]:
    """The (queue, concurrency key) whose slots a run counts in; '' for no key."""
    return run.queue, run.concurrency_key or ""


def _handback(claim: Claim) -> EndSegment:
    """Give a claimed run that never started back to its queue, attempt unspent."""
    return EndSegment(
        run_id=claim.run.id,
        epoch=claim.epoch,
        outcome="handback",
        exec_seconds=claim.run.exec_seconds,
    )


def _error_json(code: str, message: str) -> str:
    return _serde.dumps({"code": code, "message": message})
