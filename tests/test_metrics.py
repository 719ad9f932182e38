"""Prometheus metrics: counted in process on both backends, and scraped by a real
Prometheus (Debian's `prometheus`) from `outlast server` and `outlast worker
--metrics-port`, queried over its HTTP API after a known workload."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from outlast import _metrics
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from tests.apps import observability_app as app
from tests.apps.observability_backlog import obs_backlog
from tests.conftest import ROOT, spawn_worker


@pytest.fixture
def metrics(store: Any) -> Iterator[Any]:
    _metrics.disable()
    registry = _metrics.enable(store)
    yield registry
    _metrics.disable()


def _samples(registry: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = _metrics.exposition(registry)[0].decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_counters_and_gauges_in_process(store: Any, workers: Any, metrics: Any) -> None:
    client = Client(store=store, env="dev")
    for n in range(3):
        client.trigger(app.obs_quick, {"n": n})
    client.trigger(app.obs_quick, {"fail": True})
    for _ in range(2):
        client.trigger(obs_backlog, None)
    await workers(app.obs_quick).run_until_idle()
    got = _samples(metrics)

    def value(name: str, **labels: str) -> float:
        return got.get((name, frozenset(labels.items())), 0.0)

    q = "obs-quick"
    assert value("outlast_runs_triggered_total", task="obs-quick", queue=q) == 4
    assert value("outlast_runs_started_total", task="obs-quick", queue=q) == 4
    assert value("outlast_runs_finished_total", task="obs-quick", queue=q,
                 outcome="completed") == 3
    assert value("outlast_runs_finished_total", task="obs-quick", queue=q, outcome="failed") == 1
    assert value("outlast_trigger_to_start_seconds_count", task="obs-quick", queue=q) == 4
    assert value("outlast_claim_batch_size_sum") == 4
    assert value("outlast_queue_depth", env="dev", queue="obs-backlog") == 2
    assert value("outlast_queue_depth", env="dev", queue=q) == 0
    assert value("outlast_queue_limit", env="dev", queue=q) == 5
    assert value("outlast_queue_executing", env="dev", queue=q) == 0
    assert value("outlast_workers_live", env="dev", version="") == 1


async def test_runs_ended_outside_a_worker_are_counted_once(
    store: Any, clock: Any, workers: Any, metrics: Any
) -> None:
    """A run cancelled while queued and one expired before it started end without a
    worker executing them: a worker serving their task takes them (once in the fleet) and
    counts them, so a dashboard of outcomes sees every end."""
    client = Client(store=store, env="dev")
    cancelled = client.trigger(app.obs_quick, {"n": 1})
    client.cancel(cancelled.id)
    late = client.trigger(app.obs_quick, {"n": 2}, ttl=10)
    clock.advance(11)
    await workers(app.obs_quick).run_until_idle()
    assert client.retrieve(late.id).status == RunStatus.EXPIRED

    def finished(outcome: str) -> float:
        key = frozenset({"task": "obs-quick", "queue": "obs-quick", "outcome": outcome}.items())
        return _samples(metrics).get(("outlast_runs_finished_total", key), 0.0)

    assert (finished("canceled"), finished("expired")) == (1, 1)
    # Taken once: another worker of the same code counts neither again.
    await workers(app.obs_quick).run_until_idle()
    assert (finished("canceled"), finished("expired")) == (1, 1)
    assert store.take_ended_elsewhere("dev", ["obs-quick"], None) == []


# -- a real Prometheus ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def _eventually(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


@pytest.mark.parametrize("backend", ["postgres"])
def test_prometheus_scrapes_server_and_worker(db_url: str, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus package is needed (scripts/test installs it)"
    server_port, worker_port, prom_port = _free_port(), _free_port(), _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: outlast-server\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server_port}']}}]\n"
        "  - job_name: outlast-worker\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{worker_port}']}}]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    store = open_store(db_url)
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "outlast", "server", "--database-url", db_url,
             "--host", "127.0.0.1", "--port", str(server_port)], cwd=ROOT, env=env))
        procs.append(spawn_worker(db_url, "tests.apps.observability_app",
                                  extra=["--metrics-port", str(worker_port)]))
        procs.append(subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        prom = f"http://127.0.0.1:{prom_port}"

        client = Client(store=store, env="dev")
        handles = [client.trigger(app.obs_quick, {"n": n}) for n in range(6)]
        handles += [client.trigger(app.obs_quick, {"fail": True}) for _ in range(2)]
        for _ in range(4):
            client.trigger(obs_backlog, None)
        for h in handles:
            assert client.wait_for_run(h.id, 60).status in (RunStatus.COMPLETED,
                                                            RunStatus.FAILED)

        def both_up() -> bool:
            up = _query(prom, "up")
            return len(up) == 2 and all(r["value"][1] == "1" for r in up)

        _eventually("both targets up", both_up)

        def finished() -> dict[str, float]:
            rows = _query(prom, 'sum by (outcome) (outlast_runs_finished_total{task="obs-quick"})')
            got = {r["metric"]["outcome"]: float(r["value"][1]) for r in rows}
            return got if got == {"completed": 6.0, "failed": 2.0} else {}

        _eventually("the finished-run counters", finished)

        def backlog() -> list[dict[str, Any]]:
            rows = _query(prom, 'outlast_queue_depth{queue="obs-backlog",env="dev"}')
            return rows if rows and {r["value"][1] for r in rows} == {"4"} else []

        rows = _eventually("the backlog's depth", backlog)
        # Both processes read the gauge from the database: the same value from each.
        assert {r["metric"]["job"] for r in rows} == {"outlast-server", "outlast-worker"}
        age = _query(prom, 'max(outlast_queue_oldest_ready_age_seconds{queue="obs-backlog"})')
        assert float(age[0]["value"][1]) > 0
        live = _query(prom, 'max(outlast_workers_live{env="dev"})')
        assert float(live[0]["value"][1]) == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        store.close()
