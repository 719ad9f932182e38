"""Prometheus metrics (``outlast[metrics]``): what this process did, counted as it happens
(an ``Observer`` of ``_observe``), and the store's queues and workers, read when scraped.

``enable(store)`` turns them on and returns the registry; ``/metrics`` on ``outlast server``
(and ``outlast dev``) serves it, and ``outlast worker --metrics-port N`` serves it on a port
of its own (``serve``). Nothing is counted in a process that never enabled them.
Counters are per process, as Prometheus expects (it sums over scraped processes); the
queue and worker gauges come from the database, so every scraped process reports the
same values for them: aggregate those with ``max``, not ``sum``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import _observe

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .durable import RunContext
    from .runs import Run
    from .store.base import Claim, EndSegment, NewRun, Store, WorkerStore

log = logging.getLogger("outlast.metrics")

_FINAL = {"completed", "failed", "timed_out", "canceled"}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from ._errors import ConfigurationError

        raise ConfigurationError(
            "metrics need prometheus_client: pip install 'outlast[metrics]'"
        ) from exc


class _StoreCollector:
    """Queue and worker gauges, read from the store at each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # no up-front description: a scrape never fails on registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            queues = self.store.queue_gauges()
            workers = self.store.live_workers()
            now = self.store.now()
        except Exception:
            log.warning("metrics: cannot read the store", exc_info=True)
            return
        labels = ["env", "queue"]
        depth = GaugeMetricFamily(
            "outlast_queue_depth", "Runs queued (ready or waiting for a slot)", labels=labels
        )
        age = GaugeMetricFamily(
            "outlast_queue_oldest_ready_age_seconds",
            "Seconds the oldest queued run has been ready (0 when none)",
            labels=labels,
        )
        executing = GaugeMetricFamily(
            "outlast_queue_executing", "Runs holding a slot of the queue", labels=labels
        )
        limit = GaugeMetricFamily(
            "outlast_queue_limit", "The queue's concurrency limit (absent: none)", labels=labels
        )
        for q in queues:
            key = [q.env, q.queue]
            depth.add_metric(key, q.depth)
            oldest = q.oldest_ready_at
            age.add_metric(key, max(0.0, now - oldest) if oldest is not None else 0.0)
            executing.add_metric(key, q.executing)
            if q.limit is not None:
                limit.add_metric(key, q.limit)
        live = GaugeMetricFamily(
            "outlast_workers_live", "Live workers", labels=["env", "version"]
        )
        for (env, version), n in workers.items():
            live.add_metric([env, version], n)
        yield from (depth, age, executing, limit, live)


class MetricsObserver(_observe.Observer):
    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: Sequence[str], buckets: Any) -> Any:
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        self.triggered_total = counter(
            "outlast_runs_triggered", "Runs triggered from this process", ["task", "queue"]
        )
        self.started = counter(
            "outlast_runs_started", "Runs whose first attempt started here", ["task", "queue"]
        )
        self.finished = counter(
            "outlast_runs_finished",
            "Runs that ended on this worker, or ended outside any worker and were taken by"
            " this one (expired, cancelled while not executing), by outcome",
            ["task", "queue", "outcome"],
        )
        self.attempts = counter(
            "outlast_attempt_segments",
            "Attempt segments executed here, by how they ended "
            "(completed, failed, retry, suspend, canceled, timed_out, handback, lost)",
            ["task", "queue", "outcome"],
        )
        self.retries = counter("outlast_retries", "Attempts that failed and were retried", ["task"])
        self.latency = histogram(
            "outlast_trigger_to_start_seconds",
            "From a run's trigger (or the end of its delay) to the start of its first attempt",
            ["task", "queue"],
            _LATENCY_BUCKETS,
        )
        self.step_seconds = histogram(
            "outlast_step_duration_seconds", "Step bodies executed", ["task"], _STEP_BUCKETS
        )
        self.claim_batch = histogram(
            "outlast_claim_batch_size", "Runs per claim", [], _BATCH_BUCKETS
        )
        self.lease_losses = counter(
            "outlast_lease_losses", "Times this worker lost its lease or life lock"
        )
        self.deaths = counter(
            "outlast_worker_deaths_detected", "Dead workers this process's reaper declared"
        )
        self.webhooks_refused = counter(
            "outlast_webhooks_refused",
            "Incoming webhook requests refused for a bad, missing or stale signature",
            ["scheme"],
        )

    def triggered(self, run: NewRun) -> None:
        self._child(self.triggered_total, run.task_id, run.queue).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """The metric's child for these labels, bound once: ``labels()`` costs microseconds
        per call, and a drain calls this a few times per run."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def claimed(self, claims: Sequence[Claim], now: float) -> None:
        self.claim_batch.observe(len(claims))
        for c in claims:
            run = c.run
            # Its first start: a claim sets started_at once, with segment_started_at.
            if run.attempt == 1 and run.started_at in (None, run.segment_started_at):
                self._child(self.started, run.task_id, run.queue).inc()
                since = run.delay_until if run.delay_until is not None else run.created_at
                self._child(self.latency, run.task_id, run.queue).observe(max(0.0, now - since))

    def attempt_ended(
        self, ctx: RunContext, op: EndSegment | None, exc: BaseException | None
    ) -> None:
        run = ctx.run
        outcome = op.outcome if op is not None else "lost"
        self._child(self.attempts, run.task_id, run.queue, outcome).inc()
        if outcome == "retry":
            self._child(self.retries, run.task_id).inc()
        elif outcome in _FINAL:
            self._child(self.finished, run.task_id, run.queue, outcome).inc()

    async def run_ended_elsewhere(self, store: WorkerStore, run: Run) -> None:
        outcome = run.status.value.lower()  # canceled, expired, failed, timed_out
        self._child(self.finished, run.task_id, run.queue, outcome).inc()

    def step_ended(
        self, ctx: RunContext, key: str, seen: Any, seconds: float, exc: BaseException | None
    ) -> None:
        self._child(self.step_seconds, ctx.run.task_id).observe(seconds)

    def lease_lost(self, runs: int) -> None:
        self.lease_losses.inc()

    def workers_reaped(self, n: int) -> None:
        if n:
            self.deaths.inc(n)

    def webhook_refused(self, scheme: str, reason: str) -> None:
        # By scheme only: the reason's text would make an unbounded label.
        self._child(self.webhooks_refused, scheme).inc()


_lock = threading.Lock()
_registry: CollectorRegistry | None = None
_stores: set[int] = set()


def enable(store: Store | None = None) -> CollectorRegistry:
    """Count from now on in this process; the registry to expose. With ``store``, the
    queue and worker gauges are read from it at each scrape."""
    global _registry
    _require()
    from prometheus_client import CollectorRegistry, ProcessCollector

    with _lock:
        if _registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            _observe.add(MetricsObserver(registry))
            _registry = registry
        if store is not None and not _stores:  # the first store only
            _stores.add(id(store))
            _registry.register(_StoreCollector(store))
        return _registry


def disable() -> None:
    """Stop counting and forget the registry (tests; a process that changes stores)."""
    global _registry
    with _lock:
        _observe.remove(MetricsObserver)
        _registry = None
        _stores.clear()


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text of ``registry`` and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve(port: int, store: Store, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` from a thread of its own (``outlast worker``)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=enable(store))
    log.info("metrics on http://%s:%d/metrics", host, port)
