"""The scheduler: the timer loop every server and worker runs (``--no-scheduler`` turns it
off). It starts due delayed runs, expires TTLs, fires waitpoint timers, reaps dead and
lapsed workers, forgets old request keys, fires cron slots (``_schedule_firing``), groups
failures and sends alerts (``_alerts``), folds finished runs into usage rollups, and
prunes finished runs past their retention, a bounded batch at a time (``_retention``).
Every statement is safe to run from any number of processes at once (conditional updates,
row locks, unique keys), so there is no leader to elect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import cast

from . import _observe
from ._alerts import AlertLoop
from ._retention import Pruner
from ._schedule_firing import fire_due
from ._usage import SpikeAlerts
from .store._events_base import EventStore
from .store._usage_base import UsageRollups, UsageStore
from .store.base import DashboardStore, SchedulerStore, TaskDef

log = logging.getLogger(__name__)
USAGE_INTERVAL = 10.0  # seconds between folds of finished runs into usage rollups


class Scheduler:
    def __init__(self, store: SchedulerStore, *, interval: float = 0.25) -> None:
        self.store = store
        self.interval = interval
        self._last_cleanup = 0.0
        self._task_defs: dict[tuple[str, str], TaskDef | None] = {}
        self._defs_at = 0.0
        self.alerts = AlertLoop(store, store.clock)
        self._sending: asyncio.Future[None] | None = None
        self._usage_at = 0.0
        self.pruner = Pruner(store)
        self.spikes: SpikeAlerts | None = None

    async def tick(self) -> None:
        ticked = await asyncio.to_thread(self.store.tick)
        reaped = await asyncio.to_thread(self.store.reap_dead_workers)
        if _observe.OBSERVERS:
            _observe.workers_reaped(ticked.reaped_workers + reaped.reaped_workers)
        if time.monotonic() - self._last_cleanup > 600:
            self._last_cleanup = time.monotonic()
            await asyncio.to_thread(self.store.forget_old_requests)
            await asyncio.to_thread(self.store.prune_schedule_slots)
            if isinstance(self.store, EventStore):  # the event log's retention
                await asyncio.to_thread(self.store.prune_events)
        await self.fire_schedules()
        due = time.monotonic() - self._usage_at > USAGE_INTERVAL
        if due and isinstance(self.store, UsageRollups):  # usage rollups: store/_sql_usage.py
            self._usage_at = time.monotonic()
            await asyncio.to_thread(self.store.aggregate_usage)
            if isinstance(self.store, UsageStore):  # usage.spike alerts, about once a minute
                if self.spikes is None:
                    self.spikes = SpikeAlerts(cast(DashboardStore, self.store))
                try:
                    await asyncio.to_thread(self.spikes.step)
                except Exception:
                    log.exception("usage spike alerts failed")
        try:  # retention: a failed prune must not stop alerts (it is retried next pass)
            await asyncio.to_thread(self.pruner.step)
        except Exception:
            log.exception("pruning finished runs failed")
        try:  # alerts and error groups: their failure must not stop the timers above
            await asyncio.to_thread(self.alerts.scan)
        except Exception:
            log.exception("alerts scan failed")
        if (self._sending is None or self._sending.done()) and self.alerts.send_due_now():
            self._sending = asyncio.ensure_future(asyncio.to_thread(self._send_alerts))

    def _send_alerts(self) -> None:
        try:
            self.alerts.sender.send_due()
        except Exception:
            log.exception("sending alerts failed")

    async def fire_schedules(self) -> int:
        """Fire due cron slots; each fires once however many schedulers run (C6)."""
        if time.monotonic() - self._defs_at > 10.0:  # task defaults change with deploys
            self._defs_at = time.monotonic()
            self._task_defs.clear()
        return await asyncio.to_thread(fire_due, self.store, defs=self._task_defs)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        await self.aclose()

    async def aclose(self) -> None:
        """Let alerts being posted finish (a post logs its own failure)."""
        if self._sending is not None:
            await self._sending
