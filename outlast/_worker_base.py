"""What the parts of a worker share: its state, and the calls one part makes on another.

``Worker`` (``worker.py``, its lifecycle) is put together from ``_claiming`` (claims and
hand-overs), ``_attempts`` (executing runs) and ``_hooks`` (lifecycle hooks), each a class
over this one. Their state is set up in ``Worker.__init__``; here it is only declared, so
each part can be read, and type-checked, on its own.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Mapping
from typing import Any

from ._committer import Committer
from ._threads import RunThread
from ._wakeups import Wakeups
from ._watchdog import Watchdog
from .durable import RunContext
from .runs import Run
from .store.base import Claim, EndSegment, WorkerStore
from .tasks import Task


class WorkerBase:
    store: WorkerStore
    tasks: Mapping[str, Task[Any, Any]]
    env: str
    id: str
    version: str
    concurrency: int
    prefetch: int
    poll_interval: float
    rng: random.Random
    executed: int
    claimed_total: int
    active: dict[str, RunContext]
    _ready: collections.deque[Claim]
    _reserved: dict[tuple[str, str], collections.deque[Claim]]
    _reserve_keys: set[tuple[str, str]]
    _limited: set[str]
    _finishing: set[str]
    _avg_seconds: float | None
    _running: set[asyncio.Task[None]]
    _overrun: set[RunThread]
    _watchdog: Watchdog
    _committer: Committer | None
    _stopping: bool
    _slot_freed: asyncio.Event | None
    _serves: dict[str, list[str]]
    _serves_at: float
    _waiter: asyncio.Future[None] | None
    _wakeups: Wakeups
    _handovers: dict[tuple[str, int], float]
    _dry: bool
    _lost: bool
    _generation: int
    _claim_generation: int
    _found: asyncio.Event | None

    @property
    def committer(self) -> Committer:
        assert self._committer is not None, "worker not started"
        return self._committer

    # Each part's calls on another, overridden there (see the module's docstring).
    def _launch(self, claim: Claim) -> None:
        raise NotImplementedError

    def _start_ready(self) -> None:
        raise NotImplementedError

    def _slot_signal(self) -> None:
        raise NotImplementedError

    def _hand_over(self, run: Run) -> None:
        raise NotImplementedError

    async def _after(
        self, ctx: RunContext, task: Task[Any, Any], op: EndSegment, output: Any
    ) -> None:
        raise NotImplementedError

    async def _hook(
        self,
        task: Task[Any, Any],
        name: str,
        run: Run,
        payload: Any,
        *,
        status: Any = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        raise NotImplementedError
