"""outlast: durable background jobs for Python.

Define tasks with ``@task``; inside them use ``step.run`` for memoized steps, ``wait``
for durable pauses, ``logger`` and ``metadata``. Trigger from app code with
``await my_task.trigger(payload)`` or a ``Client``.

This module exports what a task author or an app uses. Running workers in-process is
for tests and tooling: ``from outlast.worker import Worker, HookEvent``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _observe
from ._clock import FakeClock, SystemClock
from ._debounce import Batch, Debounce
from ._errors import (
    AbortRun,
    NonDeterminismError,
    OutlastError,
    PayloadTooLarge,
    RunFailedError,
    RunNotFound,
    TokenNotFound,
    TokenTimedOut,
    UnknownTask,
    ValidationError,
)
from ._events import CancelOn
from ._observe import instrument
from ._patches import patched
from .client import AsyncClient, Client
from .durable import RunInfo, Token, WaitResult, current_run, logger, metadata, step, wait
from .runs import Run, RunHandle, RunStatus, SyncRunHandle, TaskRunResult
from .schedules import ScheduledPayload
from .store._events_base import PublishResult
from .store.base import Waitpoint
from .tasks import Queue, Retry, Task, queue, task

if TYPE_CHECKING:
    from .worker import HookEvent as HookEvent
    from .worker import Worker as Worker

__version__ = "0.1.0"


def complete_token(token_id: str, data: Any = None) -> Waitpoint:
    """Complete a waitpoint token from app code; the first completion wins (C7)."""
    from .client import default_client

    return default_client().complete_token(token_id, data)


def publish(name: str, data: Any = None, *, id: str | None = None) -> PublishResult:
    """Publish an event with the default client: every subscribed task whose filter
    matches gets one run, created in the event's transaction. The same ``id`` again
    within its deduplication window (24 h by default) does nothing new."""
    from .client import default_client

    return default_client().publish(name, data, id=id)


# Names that moved out of this module and still import from it (from outlast import Worker).
_MOVED = {"HookEvent": "outlast.worker", "Worker": "outlast.worker"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'outlast' has no attribute {name!r}")


__all__ = [
    "AbortRun",
    "AsyncClient",
    "Batch",
    "CancelOn",
    "Client",
    "Debounce",
    "FakeClock",
    "NonDeterminismError",
    "OutlastError",
    "PayloadTooLarge",
    "PublishResult",
    "Queue",
    "Retry",
    "Run",
    "RunFailedError",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "ScheduledPayload",
    "SyncRunHandle",
    "SystemClock",
    "Task",
    "TaskRunResult",
    "Token",
    "TokenNotFound",
    "TokenTimedOut",
    "UnknownTask",
    "ValidationError",
    "WaitResult",
    "complete_token",
    "current_run",
    "instrument",
    "logger",
    "metadata",
    "patched",
    "publish",
    "queue",
    "step",
    "task",
    "wait",
]


# The standard OTEL_* variables turn tracing on in any process that imports outlast.
_observe.from_environment()
