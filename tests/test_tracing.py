"""OpenTelemetry traces in process, on both backends: one trace from the caller's span
through the trigger, the attempts (a failed one, a retried one), steps executed and
replayed, a parked sleep, a child run, to the run's outcome; task logs as OTel log
records with the trace and span ids. (tests/test_observability_e2e.py exports over
OTLP from real worker processes, one of them killed.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from outlast import Retry, _observe, _tracing, instrument, logger, step, task, wait
from outlast._clock import FakeClock
from outlast._http import HttpTransport
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server import create_app
from outlast.server.auth import create_key

STATE: dict[str, int] = {}


@task(id="tr-child", retry=Retry(max_attempts=1))
async def child(p: dict[str, Any]) -> int:
    return int(p["n"]) * 2


@task(id="tr-parent", retry=Retry(max_attempts=3, min_delay=5.0, max_delay=5.0, jitter=False),
      tags=["team:a"])
async def parent(p: dict[str, Any]) -> int:
    a = await step.run("a", lambda: 1)

    async def b() -> int:
        STATE["b"] = STATE.get("b", 0) + 1
        if STATE["b"] == 1:
            raise RuntimeError("flaky b")
        logger.info("b done", tries=STATE["b"])
        return 2

    got = await step.run("b", b)
    await wait.sleep(60)
    r = await child.trigger_and_wait({"n": a + got})
    return int(r.output)


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, TracerProvider, InMemoryLogRecordExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    logs = InMemoryLogRecordExporter()
    log_provider = LoggerProvider()
    log_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    STATE.clear()
    instrument(tracer_provider=provider, logger_provider=log_provider)
    yield exporter, provider, logs
    _tracing.uninstrument()
    assert not any(isinstance(o, _tracing.TracingObserver) for o in _observe.OBSERVERS)


def _by_name(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def _parent_id(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


async def test_one_trace_from_the_callers_span_to_the_outcome(
    store: Any, clock: FakeClock, workers: Any, spans: Any
) -> None:
    exporter, provider, logs = spans
    client = Client(store=store, env="dev")
    with provider.get_tracer("app").start_as_current_span("POST /signup") as caller:
        handle = client.trigger(parent, {})
    worker = workers(parent, child)
    await worker.run_until_idle()  # attempt 1 fails in b: retry in 5 s
    clock.advance(6)
    await worker.run_until_idle()  # attempt 2: a replayed, b executed, parked on the sleep
    clock.advance(61)
    await worker.run_until_idle()  # resumed: the child runs, the parent completes
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    done = list(exporter.get_finished_spans())

    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in done} == {trace_id}, "one trace"
    ids = {s.context.span_id: s for s in done}
    root = [s for s in done if s.parent is None]
    assert [s.name for s in root] == ["POST /signup"]

    triggers = _by_name(done, "trigger tr-parent")
    assert len(triggers) == 1 and _parent_id(triggers[0]) == caller.get_span_context().span_id
    trig = triggers[0].context.span_id
    attempts = _by_name(done, "attempt tr-parent")
    # attempt 1; attempt 2 up to the sleep; after it, up to the child; to the end
    assert [a.attributes["outlast.outcome"] for a in attempts] == [
        "retry", "suspend", "suspend", "completed"]
    assert all(_parent_id(a) == trig for a in attempts)
    first = attempts[0]
    assert first.attributes["outlast.run.id"] == handle.id
    assert first.attributes["outlast.task.id"] == "tr-parent"
    assert first.attributes["messaging.destination.name"] == "task/tr-parent"
    assert first.attributes["outlast.tags"] == ("team:a",)
    assert first.attributes["outlast.retry.delay_s"] == pytest.approx(5.0, abs=0.5)
    assert [e.name for e in first.events] == ["exception", "retry"]
    assert first.status.status_code.name == "ERROR"

    steps = _by_name(done, "step ")
    by_attempt = {}
    for s in steps:
        owner = ids[_parent_id(s)]  # type: ignore[index]
        by_attempt.setdefault(attempts.index(owner), []).append(
            (s.name, s.attributes["outlast.step.cached"]))
    assert by_attempt[0] == [("step a", False), ("step b", False)]
    assert by_attempt[1] == [("step a", True), ("step b", False)]
    assert by_attempt[2] == [("step a", True), ("step b", True)]
    failed_b = [s for s in steps if s.name == "step b" and s.status.status_code.name == "ERROR"]
    assert len(failed_b) == 1 and failed_b[0].events[0].attributes["exception.type"] == (
        "RuntimeError")

    sleeps = _by_name(done, "wait sleep")
    assert len(sleeps) == 1 and _parent_id(sleeps[0]) == trig
    assert sleeps[0].attributes["outlast.wait.seconds"] == pytest.approx(60, abs=2)
    assert len(_by_name(done, "wait children")) == 1
    assert len(_by_name(done, "retry tr-parent")) == 1

    # The child's life hangs under the parent attempt that triggered it.
    child_trigger = _by_name(done, "trigger tr-child")
    assert len(child_trigger) == 1 and _parent_id(child_trigger[0]) == (
        attempts[2].context.span_id)
    child_attempt = _by_name(done, "attempt tr-child")
    assert _parent_id(child_attempt[0]) == child_trigger[0].context.span_id

    run_spans = _by_name(done, "run tr-parent")
    assert len(run_spans) == 1 and run_spans[0].attributes["outlast.outcome"] == "completed"

    # logger.info in step b (attempt 2): an OTel log record in b's span, with the run id.
    records = [r.log_record for r in logs.get_finished_logs()]
    said = [r for r in records if r.body == "b done"]
    assert len(said) == 1
    executed_b = [s for s in steps if s.name == "step b" and s.status.status_code.name != "ERROR"
                  and not s.attributes["outlast.step.cached"]]
    assert said[0].span_id == executed_b[0].context.span_id
    assert said[0].trace_id == trace_id
    assert said[0].attributes["run_id"] == handle.id


async def test_failure_recorded_on_the_run_span(
    store: Any, workers: Any, spans: Any
) -> None:
    exporter, _, _ = spans

    @task(id="tr-doomed", retry=Retry(max_attempts=1))
    async def doomed(p: Any) -> None:
        raise ValueError("no such plan")

    client = Client(store=store, env="dev")
    handle = client.trigger(doomed, None)
    await workers(doomed).run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.FAILED
    (run_span,) = _by_name(list(exporter.get_finished_spans()), "run tr-doomed")
    assert run_span.status.status_code.name == "ERROR"
    assert run_span.attributes["outlast.outcome"] == "failed"
    assert run_span.events[0].attributes["exception.message"] == "no such plan"


async def test_a_run_cancelled_before_it_started_ends_its_trace(
    store: Any, workers: Any, spans: Any
) -> None:
    """No worker executed it, yet its trace gets its run span (outcome canceled), under
    the trigger's span, sent by the worker that takes the ended run."""
    exporter, provider, _ = spans
    client = Client(store=store, env="dev")
    with provider.get_tracer("app").start_as_current_span("POST /order") as caller:
        handle = client.trigger(child, {"n": 1})
    client.cancel(handle.id)
    await workers(child).run_until_idle()
    done = list(exporter.get_finished_spans())
    (run_span,) = _by_name(done, "run tr-child")
    assert run_span.attributes["outlast.outcome"] == "canceled"
    assert run_span.attributes["outlast.run.id"] == handle.id
    assert run_span.context.trace_id == caller.get_span_context().trace_id
    (trigger_span,) = _by_name(done, "trigger tr-child")
    assert _parent_id(run_span) == trigger_span.context.span_id
    assert not _by_name(done, "attempt tr-child")


def test_off_by_default_and_no_trace_row(store: Any) -> None:
    """Without instrument() no trace context is written with a trigger."""
    assert not any(isinstance(o, _tracing.TracingObserver) for o in _observe.OBSERVERS)
    handle = Client(store=store, env="dev").trigger(child, {"n": 1})
    assert store.trace_contexts("dev", [handle.id]) == {}


async def test_a_trigger_over_http_continues_the_callers_trace(store: Any, spans: Any) -> None:
    """The HTTP client sends the caller's traceparent; the server opens the trigger span
    under it, and stores the run's context in the same trace."""
    exporter, provider, _ = spans
    store.publish_tasks("dev", [child.definition()])
    key = create_key(store, "dev").secret
    app = create_app(store, dashboard=False)
    with provider.get_tracer("app").start_as_current_span("POST /checkout") as caller:
        headers: dict[str, str] = {"Authorization": f"Bearer {key}"}
        _observe.inject(headers)  # what HttpTransport.request adds to every request
    # Outside the caller's span here: the trace travels in the headers only, as it does
    # between processes.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://outlast.test", headers=headers) as c:
        resp = await c.post("/api/v1/tasks/tr-child/trigger", json={"payload": {"n": 1}})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["id"]
    (trig,) = _by_name(list(exporter.get_finished_spans()), "trigger tr-child")
    ctx = caller.get_span_context()
    assert trig.context.trace_id == ctx.trace_id and _parent_id(trig) == ctx.span_id
    stored = store.trace_contexts("dev", [run_id])[run_id]
    assert stored.split("-")[1] == format(ctx.trace_id, "032x")


def test_the_http_client_sends_the_callers_traceparent(spans: Any) -> None:
    _, provider, _ = spans
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    transport = HttpTransport("http://outlast.test", "sk_test")
    transport._http = httpx.Client(transport=httpx.MockTransport(answer),
                                   base_url="http://outlast.test")
    with provider.get_tracer("app").start_as_current_span("job") as caller:
        transport.request("GET", "/api/v1/health")
    transport.close()
    trace_id = format(caller.get_span_context().trace_id, "032x")
    assert seen[0].headers["traceparent"].split("-")[1] == trace_id
