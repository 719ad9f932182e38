"""outlast: durable background jobs for Python.

Define tasks with ``@task``; inside them use ``step.run`` for memoized steps, ``wait``
for durable pauses, ``logger`` and ``metadata``. Trigger from app code with
``await my_task.trigger(payload)`` or a ``Client``.
"""

from __future__ import annotations

from typing import Any

from ._clock import FakeClock, SystemClock
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
from .client import AsyncClient, Client
from .durable import RunInfo, Token, WaitResult, current_run, logger, metadata, step, wait
from .runs import Run, RunHandle, RunStatus, TaskRunResult
from .schedules import ScheduledPayload
from .store.base import Waitpoint
from .tasks import Queue, Retry, Task, queue, task
from .worker import HookEvent, Worker

__version__ = "0.1.0"


def complete_token(token_id: str, data: Any = None) -> Waitpoint:
    """Complete a waitpoint token from app code; the first completion wins (C7)."""
    from .client import default_client

    return default_client().complete_token(token_id, data)


__all__ = [
    "AbortRun",
    "AsyncClient",
    "Client",
    "FakeClock",
    "HookEvent",
    "NonDeterminismError",
    "OutlastError",
    "PayloadTooLarge",
    "Queue",
    "Retry",
    "Run",
    "RunFailedError",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "ScheduledPayload",
    "SystemClock",
    "Task",
    "TaskRunResult",
    "Token",
    "TokenNotFound",
    "TokenTimedOut",
    "UnknownTask",
    "ValidationError",
    "WaitResult",
    "Worker",
    "complete_token",
    "current_run",
    "logger",
    "metadata",
    "queue",
    "step",
    "task",
    "wait",
]
