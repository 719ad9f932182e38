"""OpenTelemetry traces and logs (``outlast[otel]``): one trace per run, whatever process
and however many workers it passes through.

The trigger is a span (``trigger <task>``, a PRODUCER) under the caller's current span; its
W3C traceparent is stored with the run (``run_traces``), so every worker that takes the run
up, after a crash, a retry or a week's wait, opens its spans under it. Under it:

- ``queued <task>``: from the moment the run was ready to its claim, once per segment;
- ``attempt <task>`` (a CONSUMER): one segment of one attempt, ending in its outcome
  (completed, failed, retry, suspend, canceled, timed_out, handback); the exception raised
  is recorded on it; a retry adds ``retry <task>`` over the backoff delay;
- ``step <key>`` under the attempt (or the step that is current): executed, or
  ``outlast.step.cached`` on replay;
- ``wait <kind>``: a parked wait (sleep, token, children), from its start to its
  completion, recorded by the segment that resumes after it;
- ``run <task>``: the whole run, from its trigger to its final outcome, with the error;
- child runs: their trigger spans open under the parent's step or attempt, so their whole
  life is in the parent's trace.

``logger.*`` in a task is a log record of the ``outlast.task`` logger, which carries run id,
task id and attempt; ``instrument`` adds OpenTelemetry's handler to it, so the record is also
an OTel log record with the current trace and span ids.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import _observe

if TYPE_CHECKING:
    from .durable import RunContext
    from .runs import JournalEntry, Run
    from .store.base import EndSegment, NewRun, WorkerStore

log = logging.getLogger("outlast.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
_WAIT_KINDS = {"sleep", "until", "token", "children"}
_ERRORS = {"failed", "retry", "timed_out"}
_FINAL = {"completed", "failed", "timed_out", "canceled"}
_CACHE = 10_000  # trace contexts of runs kept per worker, newest


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def run_attributes(
    run_id: str,
    task_id: str,
    queue: str,
    concurrency_key: str | None,
    tags: Sequence[str],
    version: str | None = None,
) -> dict[str, Any]:
    """A run's span attributes: outlast's own and OTel's messaging conventions (outlast
    is the messaging system, the queue the destination, the run the message)."""
    attrs: dict[str, Any] = {
        "outlast.run.id": run_id,
        "outlast.task.id": task_id,
        "outlast.queue": queue,
        "messaging.system": "outlast",
        "messaging.destination.name": queue,
        "messaging.message.id": run_id,
    }
    if concurrency_key:
        attrs["outlast.concurrency_key"] = concurrency_key
    if tags:
        attrs["outlast.tags"] = list(tags)
    if version:
        attrs["outlast.version"] = version
    return attrs


def _attrs_of(run: Run) -> dict[str, Any]:
    # Runs carry no version yet; when they do (versions), it is read here.
    version = getattr(run, "version", None)
    return run_attributes(
        run.id, run.task_id, run.queue, run.concurrency_key, run.tags, version
    ) | {"outlast.attempt": run.attempt, "outlast.env": run.env}


def _resumed_waits(journal: Mapping[str, JournalEntry], attempt: int) -> list[JournalEntry]:
    """The parked waits of this attempt that this segment resumes after: done, and no other
    entry started after they finished (a wait resumed by an earlier segment was followed
    by that segment's work)."""
    waits = [
        e
        for e in journal.values()
        if e.kind in _WAIT_KINDS
        and e.waitpoint_id
        and e.status == "done"
        and e.finished_at is not None
        and e.attempt == attempt
    ]
    return [
        w
        for w in waits
        if not any(
            e.started_at >= w.finished_at  # type: ignore[operator]
            for e in journal.values()
            if e is not w
        )
    ]


class TracingObserver(_observe.Observer):
    def __init__(self, tracer_provider: Any = None) -> None:
        from . import __version__

        self.provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = trace.get_tracer("outlast", __version__, tracer_provider=tracer_provider)
        self._parents: collections.OrderedDict[str, otel_context.Context | None] = (
            collections.OrderedDict()
        )
        self._attempts: weakref.WeakKeyDictionary[RunContext, tuple[Any, object]] = (
            weakref.WeakKeyDictionary()
        )

    # -- the trigger ----------------------------------------------------------------------
    def triggered(self, run: NewRun) -> None:
        span = self.tracer.start_span(
            f"trigger {run.task_id}",
            kind=SpanKind.PRODUCER,
            attributes=run_attributes(run.id, run.task_id, run.queue, run.concurrency_key,
                                      run.tags)
            | {"messaging.operation.type": "send", "outlast.env": run.env},
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        run.trace_context = carrier.get("traceparent")
        span.end()

    def flush(self) -> None:
        for provider in (self.provider, _log_provider):
            force = getattr(provider, "force_flush", None)
            if force is not None:
                force(5_000)  # milliseconds: a worker's shutdown waits this long at most

    # -- over HTTP (the client's requests, the server's handling of them) ----------------
    def inject(self, headers: dict[str, str]) -> None:
        _PROPAGATOR.inject(headers)

    def extract(self, headers: Mapping[str, str]) -> Any:
        if "traceparent" not in headers:
            return None
        return otel_context.attach(_PROPAGATOR.extract(headers))

    def detach(self, token: Any) -> None:
        otel_context.detach(token)

    # -- attempts -------------------------------------------------------------------------
    async def _parent(self, ctx: RunContext) -> otel_context.Context | None:
        run = ctx.run
        if run.id in self._parents:
            return self._parents[run.id]
        found = await asyncio.to_thread(ctx.store.trace_contexts, run.env, [run.id])
        tp = found.get(run.id)
        parent = _PROPAGATOR.extract({"traceparent": tp}) if tp else None
        self._parents[run.id] = parent
        while len(self._parents) > _CACHE:
            self._parents.popitem(last=False)
        return parent

    def _span_at(
        self, name: str, parent: otel_context.Context | None, start: float, end: float,
        attrs: dict[str, Any],
    ) -> Any:
        span = self.tracer.start_span(
            name, context=parent, attributes=attrs, start_time=_ns(start)
        )
        span.end(end_time=_ns(max(start, end)))
        return span

    async def attempt_started(self, ctx: RunContext, resumed: bool) -> None:
        run = ctx.run
        parent = await self._parent(ctx)
        attrs = _attrs_of(run)
        began = run.segment_started_at if run.segment_started_at is not None else ctx.store.now()
        for e in _resumed_waits(ctx.journal, run.attempt):
            assert e.finished_at is not None
            self._span_at(
                f"wait {e.kind}",
                parent,
                e.started_at,
                e.finished_at,
                attrs | {
                    "outlast.wait.kind": e.kind,
                    "outlast.wait.key": e.key,
                    "outlast.wait.seconds": e.finished_at - e.started_at,
                },
            )
        if run.available_at < began:
            self._span_at(f"queued {run.task_id}", parent, run.available_at, began, attrs)
        span = self.tracer.start_span(
            f"attempt {run.task_id}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attrs
            | {"messaging.operation.type": "process", "outlast.resumed": resumed},
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._attempts[ctx] = (span, token)

    def attempt_ended(
        self, ctx: RunContext, op: EndSegment | None, exc: BaseException | None
    ) -> None:
        held = self._attempts.pop(ctx, None)
        if held is None:
            return
        span, token = held
        run = ctx.run
        outcome = op.outcome if op is not None else "lost"
        span.set_attribute("outlast.outcome", outcome)
        if outcome in _ERRORS:
            if exc is not None:
                span.record_exception(exc)
                span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, outcome))
        parent = self._parents.get(run.id)
        now = ctx.store.now()
        if op is not None and op.outcome == "retry" and op.retry_at is not None:
            delay = max(0.0, op.retry_at - now)
            span.set_attribute("outlast.retry.delay_s", delay)
            span.add_event("retry", {"outlast.retry.delay_s": delay})
            self._span_at(
                f"retry {run.task_id}", parent, now, op.retry_at,
                _attrs_of(run) | {"outlast.retry.delay_s": delay},
            )
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]
        if outcome in _FINAL:
            self._run_span(run, parent, now, outcome, exc)
            self._parents.pop(run.id, None)

    async def run_ended_elsewhere(self, store: WorkerStore, run: Run) -> None:
        found = await asyncio.to_thread(store.trace_contexts, run.env, [run.id])
        tp = found.get(run.id)
        parent = _PROPAGATOR.extract({"traceparent": tp}) if tp else None
        ended = run.finished_at if run.finished_at is not None else store.now()
        # Its run span, as a worker that ran it to the end would have sent (an expired or
        # cancelled run's trace ends, instead of staying open in the backend's view).
        self._run_span(run, parent, ended, run.status.value.lower(), None)

    def _run_span(
        self, run: Run, parent: otel_context.Context | None, now: float, outcome: str,
        exc: BaseException | None,
    ) -> None:
        span = self.tracer.start_span(
            f"run {run.task_id}",
            context=parent,
            attributes=_attrs_of(run) | {"outlast.outcome": outcome},
            start_time=_ns(run.created_at),
        )
        if outcome != "completed" and outcome != "canceled":
            if exc is not None:
                span.record_exception(exc)
                span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end(end_time=_ns(max(now, run.created_at)))

    # -- steps ----------------------------------------------------------------------------
    def step_cached(self, ctx: RunContext, key: str, entry: JournalEntry) -> None:
        now = _ns(ctx.store.now())
        span = self.tracer.start_span(
            f"step {key}", attributes=_step_attrs(ctx, key, True, entry.attempt), start_time=now
        )
        span.end(end_time=now)

    def step_started(self, ctx: RunContext, key: str) -> Any:
        span = self.tracer.start_span(
            f"step {key}", attributes=_step_attrs(ctx, key, False, ctx.run.attempt)
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    def step_ended(
        self, ctx: RunContext, key: str, seen: Any, seconds: float, exc: BaseException | None
    ) -> None:
        span, token = seen
        if exc is not None and ctx.end_reason is None:  # not the platform's unwinding
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        otel_context.detach(token)


# -- set-up ----------------------------------------------------------------------------------


def _provider_from_env() -> Any:
    """The global tracer provider if the app set one, else an SDK one exporting over
    OTLP/HTTP as the OTEL_* variables say, made global."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "outlast"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def _logger_provider_from_env() -> Any:
    from opentelemetry._logs import get_logger_provider, set_logger_provider
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    current = get_logger_provider()
    if isinstance(current, LoggerProvider):
        return current
    provider = LoggerProvider(resource=Resource.create({"service.name": "outlast"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(provider)
    return provider


_SEVERITY = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17, "CRITICAL": 21}


class TaskLogHandler(logging.Handler):
    """Task log lines (logger ``outlast.task``) as OTel log records in the current span,
    with the run's fields (run id, task id, attempt, the line's own fields) as attributes."""

    def __init__(self, logger_provider: Any) -> None:
        super().__init__()
        self.otel = logger_provider.get_logger("outlast.task")

    def emit(self, record: logging.LogRecord) -> None:
        from opentelemetry._logs import SeverityNumber

        attrs: dict[str, Any] = {}
        for name in ("run_id", "task_id", "attempt"):
            value = getattr(record, name, None)
            if value is not None:
                attrs[name] = value
        fields = getattr(record, "outlast_fields", None) or {}
        for k, v in fields.items():
            attrs[f"outlast.field.{k}"] = v if isinstance(v, str | int | float | bool) else str(v)
        try:
            self.otel.emit(
                timestamp=int(record.created * 1e9),
                context=otel_context.get_current(),
                severity_number=SeverityNumber(_SEVERITY.get(record.levelname, 9)),
                severity_text=record.levelname,
                body=record.getMessage(),
                attributes=attrs,
            )
        except Exception:
            self.handleError(record)


_handler: logging.Handler | None = None
_log_provider: Any = None
_set_level = False  # instrument() set outlast.task's level; uninstrument() unsets it


def instrument(tracer_provider: Any = None, logger_provider: Any = None) -> None:
    """Trace runs (and, with a logger provider, export task logs) in this process.

    Without arguments: the global providers the app set, else SDK ones exporting over
    OTLP/HTTP as the standard OTEL_* variables say."""
    global _handler, _log_provider, _set_level
    _observe.remove(TracingObserver)
    _observe.add(TracingObserver(tracer_provider or _provider_from_env()))
    if logger_provider is None and _observe.env_wants("logs"):
        logger_provider = _logger_provider_from_env()
    if logger_provider is not None:
        task_log = logging.getLogger("outlast.task")
        if _handler is not None:
            task_log.removeHandler(_handler)
        _handler = TaskLogHandler(logger_provider)
        _log_provider = logger_provider
        task_log.addHandler(_handler)
        if task_log.level == logging.NOTSET:
            _set_level = True
            task_log.setLevel(logging.INFO)  # else the root's WARNING would drop info lines


def uninstrument() -> None:
    """Stop tracing runs in this process (tests)."""
    global _handler, _log_provider, _set_level
    _observe.remove(TracingObserver)
    _log_provider = None
    task_log = logging.getLogger("outlast.task")
    if _handler is not None:
        task_log.removeHandler(_handler)
        _handler = None
    if _set_level:
        task_log.setLevel(logging.NOTSET)
        _set_level = False


def _step_attrs(ctx: RunContext, key: str, cached: bool, step_attempt: int) -> dict[str, Any]:
    """A step span's attributes; ``step_attempt`` is the attempt that ran its body."""
    return {
        "outlast.run.id": ctx.run.id,
        "outlast.step.key": key,
        "outlast.step.cached": cached,
        "outlast.step.attempt": step_attempt,
        "outlast.attempt": ctx.run.attempt,
    }
