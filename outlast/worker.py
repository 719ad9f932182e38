"""The worker: claims runs in batches, executes them, commits their outcomes in groups.

This module holds its lifecycle (start, registration, the claim and scheduler loops,
shutdown) and its liveness (beats, losing and regaining its identity). The rest is
split by concern: ``_committer`` (group commit), ``_claiming`` (claims, held runs,
hand-overs), ``_attempts`` (executing one attempt), ``_hooks`` (lifecycle hooks), over the
shared state declared in ``_worker_base``. ``Committer`` and ``HookEvent`` are importable
from here as before.

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
import logging
import os
import random
import socket
import time
from collections.abc import Mapping
from typing import Any

from . import _events, _observe, _schedule_crud
from ._attempts import Attempts
from ._claiming import Claiming, _handback
from ._committer import Claimer, Committer
from ._config import settings
from ._heartbeat import Beat, HeartbeatThread, beat_once
from ._hooks import HookEvent, Hooks
from ._ids import new_id
from ._threads import RunThread
from ._wakeups import Wakeups
from ._watchdog import Watchdog
from ._worker_versions import Versioning
from .durable import RunContext
from .scheduler import Scheduler
from .store.base import Claim, Heartbeat, LifeLock, Store, WorkerInfo
from .tasks import REGISTRY, Task

__all__ = ["Claimer", "Committer", "HookEvent", "Worker"]

log = logging.getLogger(__name__)


class Worker(Claiming, Attempts, Hooks, Versioning):
    """Runs tasks. ``await Worker(store).run()`` until stopped; tests use
    ``run_until_idle()`` with a fake clock instead of sleeping."""

    # Every role: besides its own (``WorkerStore``, all its parts need), a worker syncs
    # declarative schedules and runs the scheduler loop.
    store: Store

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
        version: str | None = None,
        drain: bool = False,
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
        is_pg = store.backend == "postgres"
        self.poll_interval = poll_interval or (0.5 if is_pg else 0.05)
        self.scheduler = scheduler
        self.tick_interval = tick_interval
        self.shutdown_grace = shutdown_grace
        self.use_life_lock = life_lock
        self.rng = rng or random.Random()
        self.id = new_id("worker")
        self._init_versions(version, drain)
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
        self._wakeups = Wakeups(store, self._handed_over)
        self._handovers: dict[tuple[str, int], float] = {}  # heard of: (run, epoch) -> when
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
        self._drained = asyncio.Event()
        await self.refresh_versions()
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
            self._background.append(
                asyncio.create_task(self._versions_loop(self.heartbeat_interval))
            )
        log.info(
            "worker %s started: %d tasks, concurrency %d, env %s, version %s%s",
            self.id,
            len(self.tasks),
            self.concurrency,
            self.env,
            self.version,
            " (draining)" if self.draining else "",
            extra={"worker_id": self.id},
        )

    def _register(self) -> None:
        # First, so a bad cron= stops the start before anything is written.
        _schedule_crud.sync_declarative(self.store, self.env, self.tasks)
        defs = [t.definition() for t in self.tasks.values()]
        self.store.publish_tasks(self.env, defs)
        specs = {t.queue.name: t.queue.spec() for t in self.tasks.values()}
        self.store.declare_queues(self.env, list(specs.values()))
        # After the definitions: a replay="retained" subscriber gets the event log once.
        _events.deliver_retained(self.store, self.env, _events.retained_subscribers(defs))
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
                version=self.version,
                draining=self.draining,
            )
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Claim and execute until ``stop`` is set, then shut down gracefully."""
        await self.start()
        stop = stop or asyncio.Event()
        drained = None
        if self.draining and self._drained is not None:
            # A draining worker stops by itself once nothing is locked to its version.
            drained = asyncio.create_task(_set_when(self._drained, stop))
        try:
            await self._claim_loop(stop)
        finally:
            if drained is not None:
                drained.cancel()
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
        if _observe.OBSERVERS:  # spans of the last attempts, before the process exits
            await asyncio.to_thread(_observe.flush)
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
        self._wakeups.close()  # a waiter on the loop returns now, not at its poll
        if self._waiter is not None:
            with contextlib.suppress(Exception):
                await self._waiter
        await self._scheduler.aclose()
        await asyncio.to_thread(self.store.stop_worker, self.id)
        if self._lock is not None:
            self._lock.release()
        log.info("worker %s stopped", self.id, extra={"worker_id": self.id})

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
                await self.refresh_versions()
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
        if _observe.OBSERVERS:
            _observe.lease_lost(len(self.active))
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


async def _set_when(event: asyncio.Event, target: asyncio.Event) -> None:
    await event.wait()
    target.set()
