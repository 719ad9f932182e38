"""What metrics and tracing read from the store: per-queue gauges at scrape time, live
workers, and the trace context each run was triggered under (``outlast._tracing``)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueGauge:
    env: str
    queue: str
    depth: int  # runs QUEUED (ready now or once their slot frees)
    oldest_ready_at: float | None  # available_at of the oldest of them
    executing: int  # slots held over all keys
    limit: int | None  # the queue's cap: global_limit, else concurrency_limit


class RunTraces(abc.ABC):
    """A worker's part: the trace context its runs were triggered under."""

    @abc.abstractmethod
    def trace_contexts(self, env: str, run_ids: Sequence[str]) -> dict[str, str]:
        """The traceparent each of these runs was triggered under, for those that have one."""


class ObservabilityStore(abc.ABC):
    """What ``/metrics`` reads at each scrape."""

    @abc.abstractmethod
    def queue_gauges(self) -> list[QueueGauge]:
        """Every environment's queues: depth, oldest ready run, executing vs limit."""

    @abc.abstractmethod
    def live_workers(self) -> dict[tuple[str, str], int]:
        """Live workers per (environment, version); version is '' until workers have one."""
