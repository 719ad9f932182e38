"""Traces and logs exported over OTLP/HTTP from real worker processes, one of them
SIGKILLed mid-run, to a receiver this test starts and that decodes the protobuf: one trace
with the caller's span as its root, and the expected tree and attributes."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from outlast import _tracing, instrument
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from tests.apps import observability_app as app
from tests.conftest import spawn_worker


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attrs: dict[str, Any]
    events: list[str]
    error: bool


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def named(self, prefix: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name.startswith(prefix)]


def _handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                req = ExportTraceServiceRequest.FromString(body)
                spans = [
                    Span(
                        s.name,
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                        {a.key: _value(a.value) for a in s.attributes},
                        [e.name for e in s.events],
                        s.status.code == 2,
                    )
                    for rs in req.resource_spans
                    for ss in rs.scope_spans
                    for s in ss.spans
                ]
                with received.lock:
                    received.spans.extend(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
            else:
                logs = ExportLogsServiceRequest.FromString(body)
                records = [
                    {
                        "body": _value(r.body),
                        "trace_id": r.trace_id.hex(),
                        "span_id": r.span_id.hex(),
                        "attrs": {a.key: _value(a.value) for a in r.attributes},
                    }
                    for rl in logs.resource_logs
                    for sl in rl.scope_logs
                    for r in sl.log_records
                ]
                with received.lock:
                    received.logs.extend(records)
                reply = ExportLogsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received]]:
    received = Received()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(received))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def _wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_trace_across_a_killed_worker(
    db_url: str, tmp_path: Path, receiver: tuple[str, Received]
) -> None:
    endpoint, received = receiver
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{endpoint}/v1/traces")))
    instrument(tracer_provider=provider)
    store = open_store(db_url)
    client = Client(store=store, env="dev")
    otel_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_BLRP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "outlast-worker",
    }
    workers: list[Any] = []
    try:
        with provider.get_tracer("app").start_as_current_span("POST /orders") as caller:
            handle = client.trigger(
                app.obs_parent, {"dir": str(tmp_path)}, tags=["org:7"], concurrency_key="org-7"
            )
        _tracing.uninstrument()
        workers.append(spawn_worker(db_url, "tests.apps.observability_app", env=otel_env))
        # Attempt 2 is in its slow step, and its finished steps were exported: kill it.
        _wait_for("the slow step", lambda: (tmp_path / "slow-started").exists())
        _wait_for("attempt 2's step b", lambda: [
            s for s in received.named("step b") if s.attrs["outlast.attempt"] == 2])
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        workers.append(spawn_worker(db_url, "tests.apps.observability_app", env=otel_env))
        run = client.wait_for_run(handle.id, 60)
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.output == 7
        _wait_for("the run span", lambda: received.named("run obs-parent"))
        _wait_for("the child's attempt", lambda: received.named("attempt obs-child"))
        _wait_for("the task's log line", lambda: [
            r for r in received.logs if r["body"] == "slow done"])
    finally:
        _tracing.uninstrument()
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        store.close()

    spans = list(received.spans)
    trace_id = format(caller.get_span_context().trace_id, "032x")
    assert {s.trace_id for s in spans} == {trace_id}, "one trace"
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [s.name for s in roots] == ["POST /orders"]
    caller_id = roots[0].span_id

    (trigger,) = received.named("trigger obs-parent")
    assert trigger.parent_id == caller_id
    assert trigger.attrs["outlast.run.id"] == handle.id
    assert trigger.attrs["outlast.tags"] == ["org:7"]
    assert trigger.attrs["outlast.concurrency_key"] == "org-7"
    assert trigger.attrs["messaging.system"] == "outlast"
    assert trigger.attrs["messaging.operation.type"] == "send"

    attempts = received.named("attempt obs-parent")
    assert all(a.parent_id == trigger.span_id for a in attempts)
    # Attempt 2's span died with its worker; attempt 3 (the lost one counted) suspends on
    # the sleep, then on the child, then completes.
    assert sorted((a.attrs["outlast.attempt"], a.attrs["outlast.outcome"]) for a in attempts) == [
        (1, "retry"), (3, "completed"), (3, "suspend"), (3, "suspend")]
    first = next(a for a in attempts if a.attrs["outlast.attempt"] == 1)
    assert first.error and first.events == ["exception", "retry"]
    assert first.attrs["outlast.queue"] == "task/obs-parent"
    assert first.attrs["messaging.operation.type"] == "process"
    assert len(received.named("retry obs-parent")) == 1

    def steps_under(span: Span) -> list[tuple[str, bool]]:
        return [(s.name, s.attrs["outlast.step.cached"]) for s in spans
                if s.parent_id == span.span_id and s.name.startswith("step ")]

    assert steps_under(first) == [("step a", False), ("step b", False)]
    resumed = [a for a in attempts if a.attrs["outlast.attempt"] == 3]
    assert [("step a", True), ("step b", True), ("step slow", False)] in [
        steps_under(a) for a in resumed]
    # The killed attempt's finished steps were exported; they point at its lost span.
    killed = [s for s in spans if s.name.startswith("step ") and s.attrs["outlast.attempt"] == 2]
    assert {(s.name, s.attrs["outlast.step.cached"]) for s in killed} >= {
        ("step a", True), ("step b", False)}
    assert all(s.parent_id not in by_id for s in killed)

    (sleep,) = received.named("wait sleep")
    assert sleep.parent_id == trigger.span_id and sleep.attrs["outlast.wait.seconds"] >= 1.4
    assert len(received.named("wait children")) == 1
    assert len(received.named("queued obs-parent")) >= 3

    (child_trigger,) = received.named("trigger obs-child")
    assert by_id[child_trigger.parent_id].name == "attempt obs-parent"
    (child_attempt,) = received.named("attempt obs-child")
    assert child_attempt.parent_id == child_trigger.span_id
    (run_span,) = received.named("run obs-parent")
    assert run_span.parent_id == trigger.span_id
    assert run_span.attrs["outlast.outcome"] == "completed"

    (line,) = [r for r in received.logs if r["body"] == "slow done"]
    assert line["trace_id"] == trace_id
    assert by_id[line["span_id"]].name == "attempt obs-parent"
    assert line["attrs"]["run_id"] == handle.id
    assert line["attrs"]["outlast.field.c"] == 3
