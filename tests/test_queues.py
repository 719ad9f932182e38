"""Queues on both backends: concurrency limits (C5), keys served round robin, global caps,
rate limits, priority, runtime control, and why a run is not starting.

Limits are enforced at claim time, in the transaction that takes the runs, across every
worker. What the tests measure comes from task code (start and end times in a ledger
file, CLOCK_MONOTONIC across processes), not from the platform's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outlast import Retry, Worker, current_run, explain, queue, task, wait
from outlast._clock import FakeClock
from outlast.client import Client, set_default_client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from tests.apps import orchestration_app as app
from tests.conftest import ROOT, spawn_worker

APP = "tests.apps.orchestration_app"

tenants = queue("orch-q-tenants", concurrency_limit=5)
capped = queue("orch-q-capped", concurrency_limit=2, global_limit=3)
single = queue("orch-q-single", concurrency_limit=1)
slow_rate = queue("orch-q-rate", rate_limit=(3, 10.0))

STARTS: list[str] = []
LIVE: dict[str, int] = {}
PEAK: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    STARTS.clear()
    LIVE.clear()
    PEAK.clear()


def _enter(*names: str) -> None:
    for n in names:
        LIVE[n] = LIVE.get(n, 0) + 1
        PEAK[n] = max(PEAK.get(n, 0), LIVE[n])


def _leave(*names: str) -> None:
    for n in names:
        LIVE[n] -= 1


@task(id="orch-q-tenant-job", queue=tenants)
async def tenant_job(p: dict[str, Any]) -> None:
    run = current_run()
    STARTS.append(run.concurrency_key or "")
    _enter(run.concurrency_key or "")
    await asyncio.sleep(0)
    _leave(run.concurrency_key or "")


@task(id="orch-q-capped-job", queue=capped)
async def capped_job(p: dict[str, Any]) -> None:
    key = current_run().concurrency_key or ""
    _enter(key, "all")
    await asyncio.sleep(0.005)
    _leave(key, "all")


@task(id="orch-q-single-job", queue=single)
async def single_job(p: dict[str, Any]) -> str:
    STARTS.append(p["name"])
    if p.get("token"):
        return str((await wait.for_token(p["token"])).output)
    return p["name"]


@task(id="orch-q-rate-job", queue=slow_rate)
async def rate_job(p: dict[str, Any]) -> None:
    pass


@task(id="orch-q-priority-job", queue=single)
async def priority_job(p: dict[str, Any]) -> None:
    STARTS.append(p["name"])


@task(id="orch-q-flaky", retry=Retry(max_attempts=3, min_delay=30, max_delay=30, jitter=False))
async def flaky(p: dict[str, Any]) -> None:
    raise RuntimeError("try again later")


@task(id="orch-q-orphan")
async def orphan(p: dict[str, Any]) -> None:
    pass


TASKS = {
    t.id: t
    for t in (
        tenant_job,
        capped_job,
        single_job,
        rate_job,
        priority_job,
        flaky,
        app.fan_parent,
        app.fan_child,
    )
}


def _worker(store: Store, **kw: Any) -> Worker:
    return Worker(store, tasks=TASKS, **kw)


def _queue(store: Store, name: str) -> dict[str, Any]:
    for q in store.list_queues("dev"):
        if q["name"] == name:
            return q
    raise AssertionError(f"no queue {name!r}")


def peak_concurrency(events: list[dict[str, Any]], cut: dict[int, float] | None = None) -> int:
    """The most runs between their start and end at any moment, from ledger events. A run
    whose process was killed (``cut``: pid -> kill time) ended when its process did."""
    ends = {e["run"] + str(e["pid"]) for e in events if e["ev"] == "end"}
    points: list[tuple[float, int]] = []
    for e in events:
        if e["ev"] == "start":
            points.append((e["t"], 1))
            if e["run"] + str(e["pid"]) not in ends:
                assert cut is not None and e["pid"] in cut, f"a start never ended: {e}"
                points.append((cut[e["pid"]], -1))
        elif e["ev"] == "end":
            points.append((e["t"], -1))
    live = peak = 0
    for _, step in sorted(points):  # at equal times an end (-1) sorts before a start
        live += step
        peak = max(peak, live)
    return peak


@pytest.fixture
def live(db_url: str) -> Iterator[Client]:
    """A client on the real clock, for tests with worker processes (which have no fake one)."""
    client = Client(store=open_store(db_url), env="dev")
    set_default_client(client)
    yield client
    set_default_client(None)
    client.close()


def _kill(*procs: subprocess.Popen[bytes] | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


# -- concurrency limits (C5) ----------------------------------------------------------------


async def test_fan_out_of_5000_children_never_exceeds_the_queue_limit(
    store: Store, client: Client, tmp_path: Path
) -> None:
    """One worker with 50 slots, a queue limit of 10: the queue, not the worker, meters."""
    ledger = str(tmp_path / "ledger")
    handle = await app.fan_parent.trigger({"n": 5000, "ledger": ledger, "ms": 1})
    worker = _worker(store, concurrency=50)
    await worker.run_until_idle(max_seconds=110)
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"ok": 5000, "in_order": True}
    events = app.read_ledger(ledger)
    assert sum(1 for e in events if e["ev"] == "start") == 5000
    peak = peak_concurrency(events)
    print(f"fan-out 5,000 at limit 10: peak concurrent executions {peak}")
    assert 2 <= peak <= 10
    assert _queue(store, "orch-fan")["executing"] == 0
    assert _queue(store, "orch-fan")["keys"] == {}


async def test_fan_out_across_worker_processes_survives_a_kill_without_leaking_slots(
    live: Client, db_url: str, tmp_path: Path
) -> None:
    """Two worker processes share a queue limit of 10; the one running children is
    SIGKILLed mid-fan-out and a third takes over. The limit held throughout, and every
    slot came back."""
    ledger = str(tmp_path / "ledger")
    n = 200
    handle = await app.fan_parent.trigger({"n": n, "ledger": ledger, "ms": 50})
    procs = {p.pid: p for p in (spawn_worker(db_url, APP, concurrency=20) for _ in range(2))}
    cut: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            events = app.read_ledger(ledger)
            ended = {e["run"] for e in events if e["ev"] == "end"}
            busy = [e["pid"] for e in events if e["ev"] == "start" and e["run"] not in ended]
            if len(ended) >= 20 and busy:  # children ran, and one process holds some now
                victim = procs[busy[-1]]
                break
            await asyncio.sleep(0.005)
        assert victim is not None, "no worker ran children"
        victim.send_signal(signal.SIGKILL)
        cut[victim.pid] = time.monotonic()
        victim.wait()
        third = spawn_worker(db_url, APP, concurrency=20)
        procs[third.pid] = third
        run = await asyncio.to_thread(live.wait_for_run, handle.id, 90)
    finally:
        _kill(*procs.values())
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"ok": n, "in_order": True}
    events = app.read_ledger(ledger)
    killed = {e["run"] for e in events if e["pid"] in cut and e["ev"] == "start"} - {
        e["run"] for e in events if e["pid"] in cut and e["ev"] == "end"
    }
    assert killed, "the kill did not catch any child mid-run"
    peak = peak_concurrency(events, cut)
    print(f"fan-out over processes with a kill: peak {peak}, {len(killed)} children lost")
    assert peak <= 10
    for name in ("orch-fan", "task/orch-fan-parent"):
        q = _queue(live.store, name)
        assert (q["executing"], q["keys"]) == (0, {}), q  # no slot leaked


async def test_concurrency_keys_get_the_limit_each_under_a_global_cap(
    store: Store, client: Client
) -> None:
    # One key alone: its limit (2) binds.
    await capped_job.batch_trigger([{}] * 10, concurrency_key="t1")
    worker = _worker(store, concurrency=20)
    await worker.run_until_idle()
    assert (PEAK["t1"], PEAK["all"]) == (2, 2)
    # Three keys: each could run 2, but the queue's global cap (3) binds first.
    PEAK.clear()
    for key in ("t1", "t2", "t3"):
        await capped_job.batch_trigger([{}] * 10, concurrency_key=key)
    await worker.run_until_idle()
    await worker.shutdown()
    assert store.count_runs("dev")["orch-q-capped-job"] == {"COMPLETED": 40}
    assert PEAK["all"] == 3
    assert max(PEAK[k] for k in ("t1", "t2", "t3")) <= 2
    assert _queue(store, "orch-q-capped")["executing"] == 0


async def test_waiting_runs_hold_no_slot(store: Store, client: Client) -> None:
    token = client.create_token()
    parked = await single_job.trigger({"name": "parked", "token": token.id})
    worker = _worker(store)
    await worker.run_until_idle()
    assert client.retrieve(parked.id).status == RunStatus.WAITING
    # The queue's only slot is free while the first run waits, so these run now.
    others = await single_job.batch_trigger([{"name": "a"}, {"name": "b"}])
    await worker.run_until_idle()
    assert [client.retrieve(h.id).status for h in others] == [RunStatus.COMPLETED] * 2
    client.complete_token(token.id, "go")
    await worker.run_until_idle()
    await worker.shutdown()
    assert client.retrieve(parked.id).output == "go"
    assert _queue(store, "orch-q-single")["executing"] == 0


# -- fairness and priority ------------------------------------------------------------------


async def _run_until_started(worker: Worker, key: str, timeout: float = 60) -> None:
    """Run the worker until a run of ``key`` started, leaving the rest queued."""
    stop = asyncio.Event()

    async def watch() -> None:
        while key not in STARTS:
            await asyncio.sleep(0.005)
        stop.set()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(worker.run(stop), timeout)
    await watcher


async def test_one_tenants_backlog_does_not_starve_another(
    store: Store, client: Client
) -> None:
    await tenant_job.batch_trigger([{}] * 1000, concurrency_key="tenant-a")
    b = await tenant_job.trigger({}, concurrency_key="tenant-b")
    await _run_until_started(_worker(store, concurrency=2), "tenant-b")
    position = STARTS.index("tenant-b") + 1
    print(f"fairness: tenant B's single run started {position} of 1001")
    assert position <= 3
    assert client.retrieve(b.id).status == RunStatus.COMPLETED


async def test_two_backlogs_are_served_round_robin(store: Store, client: Client) -> None:
    await tenant_job.batch_trigger([{}] * 100, concurrency_key="tenant-a")
    await tenant_job.batch_trigger([{}] * 100, concurrency_key="tenant-b")
    worker = _worker(store, concurrency=4)
    await worker.run_until_idle()
    await worker.shutdown()
    first = STARTS[:40]
    print(f"round robin: of the first 40 starts, A {first.count('tenant-a')}, "
          f"B {first.count('tenant-b')}")
    assert abs(first.count("tenant-a") - first.count("tenant-b")) <= 4, first
    assert max(PEAK.values()) <= 4


async def test_priority_is_a_head_start_in_seconds(
    store: Store, client: Client, clock: FakeClock
) -> None:
    await priority_job.trigger({"name": "old"})
    clock.advance(5)
    await priority_job.trigger({"name": "plain"})
    await priority_job.trigger({"name": "urgent"}, priority=10)  # as if 10 s earlier
    clock.advance(30)
    await priority_job.trigger({"name": "late-urgent"}, priority=10)  # 20 s behind "plain"
    worker = _worker(store, concurrency=1)
    await worker.run_until_idle()
    await worker.shutdown()
    assert STARTS == ["urgent", "old", "plain", "late-urgent"]


async def test_priority_never_cuts_a_retry_backoff_short(
    store: Store, client: Client, clock: FakeClock
) -> None:
    handle = await flaky.trigger({}, priority=100)
    worker = Worker(store, tasks={"orch-q-flaky": flaky})

    def failures() -> int:
        return sum(1 for e in store.events(handle.id) if e.kind == "attempt_failed")

    await worker.run_until_idle()
    assert failures() == 1  # attempt 2 is due in 30 s
    clock.advance(25)
    await worker.run_until_idle()
    assert failures() == 1  # a head start orders claims; it does not skip the backoff
    clock.advance(6)
    await worker.run_until_idle()
    await worker.shutdown()
    assert failures() == 2


# -- rate limits ----------------------------------------------------------------------------


async def test_rate_limit_holds_across_worker_processes(
    live: Client, db_url: str, tmp_path: Path
) -> None:
    """20 starts per second, 100 runs, 4 worker processes: no 1-second window of task
    starts holds more than 20, and the whole takes the 4 s the limit implies."""
    ledger = str(tmp_path / "ledger")
    procs = [spawn_worker(db_url, APP, concurrency=10) for _ in range(4)]
    try:
        await asyncio.sleep(1.0)  # let the workers declare the queue and start polling
        handles = await app.rate_item.batch_trigger([{"ledger": ledger}] * 100)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = live.store.count_runs("dev").get("orch-rate-item", {})
            if counts.get("COMPLETED") == 100:
                break
            await asyncio.sleep(0.1)
    finally:
        _kill(*procs)
    events = app.read_ledger(ledger)
    assert len(events) == 100
    assert len({e["pid"] for e in events}) >= 2  # the limit was shared, not one worker's
    times = sorted(e["t"] for e in events)
    worst = max(sum(1 for t in times[i:] if t < s + 1.0) for i, s in enumerate(times))
    span = times[-1] - times[0]
    print(f"rate limit 20/s over 4 processes: max starts in a 1 s window {worst}, {span:.2f} s")
    claimed = sorted(live.retrieve(h.id).started_at or 0 for h in handles)  # claim times
    assert max(sum(1 for t in claimed[i:] if t < s + 1.0) for i, s in enumerate(claimed)) <= 20
    assert worst <= 20
    assert span >= 3.9
    assert {live.retrieve(h.id).status for h in handles} == {RunStatus.COMPLETED}


# -- runtime control ------------------------------------------------------------------------


async def test_pause_resume_and_change_the_limit_at_runtime(
    store: Store, client: Client
) -> None:
    worker = _worker(store, concurrency=10)
    await worker.start(background=False)  # declares the queues
    client.pause_queue("orch-q-capped")
    handles = await capped_job.batch_trigger([{}] * 6, concurrency_key="t1")
    await worker.run_until_idle()
    assert {client.retrieve(h.id).status for h in handles} == {RunStatus.QUEUED}
    assert "queue 'orch-q-capped' is paused" in explain.why(store, client.retrieve(handles[0].id))

    q = client.resume_queue("orch-q-capped")
    assert not q["paused"]
    q = client.set_queue_limit("orch-q-capped", 1)
    assert q["concurrency_limit"] == 1
    await worker.run_until_idle()
    assert {client.retrieve(h.id).status for h in handles} == {RunStatus.COMPLETED}
    assert PEAK["t1"] == 1  # the new limit held

    # A worker restarting with the code's declaration keeps the runtime change.
    await worker.shutdown()
    again = _worker(store)
    await again.start(background=False)
    assert _queue(store, "orch-q-capped")["concurrency_limit"] == 1
    client.set_queue_limit("orch-q-capped", 0)
    zero = await capped_job.trigger({})
    await again.run_until_idle()
    assert client.retrieve(zero.id).status == RunStatus.QUEUED
    assert "(0 of 0 executing)" in explain.why(store, client.retrieve(zero.id))
    client.set_queue_limit("orch-q-capped", None)  # no per-key limit; the global cap stays
    await again.run_until_idle()
    await again.shutdown()
    assert client.retrieve(zero.id).status == RunStatus.COMPLETED


def test_cli_queues(store: Store, client: Client, db_url: str) -> None:
    store.declare_queues("dev", [tenants.spec()])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "outlast", "queues", *args, "--database-url", db_url],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "orch-q-tenants: paused=True" in cli("pause", "orch-q-tenants")
    assert _queue(store, "orch-q-tenants")["paused"]
    assert "limit=3" in cli("limit", "orch-q-tenants", "3")
    assert "paused=False" in cli("resume", "orch-q-tenants")
    listing = cli("list")
    assert "orch-q-tenants" in listing.splitlines()[1] or "orch-q-tenants" in listing
    q = _queue(store, "orch-q-tenants")
    assert (q["paused"], q["concurrency_limit"]) == (0, 3)
    assert "limit=None" in cli("limit", "orch-q-tenants", "none")


# -- why isn't this run starting ------------------------------------------------------------


async def test_why_a_run_is_not_starting(store: Store, client: Client, clock: FakeClock) -> None:
    worker = _worker(store)
    await worker.start(background=False)  # a live worker serving TASKS
    wid = worker.id

    def why(run_id: str) -> str:
        return explain.why(store, client.retrieve(run_id))

    delayed = await single_job.trigger({"name": "d"}, delay=60)
    assert why(delayed.id) == "delayed until 2027-01-15 08:01:00 UTC"

    ready = await single_job.trigger({"name": "r"}, concurrency_key="k1")
    assert why(ready.id) == "queued and ready: waiting for a free worker slot"

    # Per-key limit: one run of key k1 executing, the next one waits for the slot.
    claimed = store.claim(wid, "dev", {"orch-q-single": ["orch-q-single-job"]}, 1)
    assert [c.run.id for c in claimed] == [ready.id]
    assert why(ready.id) == f"executing attempt 1 on worker {wid}"
    blocked = await single_job.trigger({"name": "b"}, concurrency_key="k1")
    assert why(blocked.id) == (
        "queue 'orch-q-single' is at its concurrency limit for key 'k1' (1 of 1 executing)"
    )
    other_key = await single_job.trigger({"name": "o"}, concurrency_key="k2")
    assert why(other_key.id) == "queued and ready: waiting for a free worker slot"

    # The global cap across keys.
    for key in ("g1", "g2", "g3"):
        await capped_job.trigger({}, concurrency_key=key)
    assert len(store.claim(wid, "dev", {"orch-q-capped": ["orch-q-capped-job"]}, 10)) == 3
    capped_run = await capped_job.trigger({}, concurrency_key="g4")
    assert why(capped_run.id) == "queue 'orch-q-capped' is at its global limit (3 of 3 executing)"

    # Rate limited: three starts per 10 s.
    await rate_job.batch_trigger([{}] * 3)
    assert len(store.claim(wid, "dev", {"orch-q-rate": ["orch-q-rate-job"]}, 10)) == 3
    limited = await rate_job.trigger({})
    assert why(limited.id) == (
        "queue 'orch-q-rate' is rate limited (3 per 10 s) until 2027-01-15 08:00:10 UTC"
    )

    # Paused.
    client.pause_queue("orch-q-rate")
    assert why(limited.id).startswith("queue 'orch-q-rate' is paused; ")

    # No worker serves the task.
    nobody = await orphan.trigger({})
    assert why(nobody.id) == "no live worker serves task 'orch-q-orphan'"

    # Retrying after a failed attempt.
    retrying = await flaky.trigger({})
    only_flaky = Worker(store, tasks={"orch-q-flaky": flaky})
    await only_flaky.run_until_idle()
    await only_flaky.shutdown()
    assert why(retrying.id) == "retrying: attempt 2 of 3 is due at 2027-01-15 08:00:30 UTC"

    # Ended.
    client.cancel(nobody.id)
    assert why(nobody.id) == "the run ended CANCELED"
    await worker.shutdown()


async def test_why_a_run_is_waiting(store: Store, client: Client) -> None:
    token = client.create_token(timeout=3600)
    handle = await single_job.trigger({"name": "w", "token": token.id})
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    assert explain.why(store, client.retrieve(handle.id)) == (
        f"waiting on token {token.id}, times out 2027-01-15 09:00:00 UTC"
    )


def test_cli_runs_show_says_why(live: Client, db_url: str) -> None:
    handle = live.trigger("orch-q-orphan", {})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "outlast", "runs", "show", handle.id, "--database-url", db_url],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "why       no live worker serves task 'orch-q-orphan'" in done.stdout


# -- soak -----------------------------------------------------------------------------------

_SOAK = pytest.mark.skipif("'soak' not in config.getoption('markexpr')", reason="run with -m soak")


@pytest.mark.soak
@_SOAK
async def test_fan_out_of_50000_children_soak(
    store: Store, client: Client, tmp_path: Path
) -> None:
    ledger = str(tmp_path / "ledger")
    handle = await app.fan_parent.trigger({"n": 50_000, "ledger": ledger})
    worker = _worker(store, concurrency=50)
    await worker.run_until_idle(max_seconds=3000)
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"ok": 50_000, "in_order": True}
    peak = peak_concurrency(app.read_ledger(ledger))
    print(f"fan-out 50,000 at limit 10: peak concurrent executions {peak}")
    assert peak <= 10
    assert _queue(store, "orch-fan")["executing"] == 0


@pytest.mark.soak
@_SOAK
async def test_batch_trigger_of_50000_in_one_call_soak(store: Store, client: Client) -> None:
    worker = _worker(store)
    await worker.start(background=False)
    handles = await app.fan_child.batch_trigger(
        [{"i": i, "ledger": os.devnull} for i in range(50_000)]
    )
    assert len({h.id for h in handles}) == 50_000
    assert _queue(store, "orch-fan")["queued"] == 50_000
    # Metered by the child's queue: one worker with 50 slots holds 10 of them.
    claimed = store.claim(worker.id, "dev", {"orch-fan": ["orch-fan-child"]}, 50)
    assert len(claimed) == 10
    assert explain.why(store, client.retrieve(handles[-1].id)) == (
        "queue 'orch-fan' is at its concurrency limit (10 of 10 executing)"
    )
    await worker.shutdown(grace=0)


@pytest.mark.parametrize(
    "backlog", [10_000, pytest.param(50_000, marks=[pytest.mark.soak, _SOAK])]
)
async def test_a_large_backlog_does_not_starve_another_tenant(
    store: Store, client: Client, backlog: int
) -> None:
    """The fairness claim at scale: 10,000 by default, the documented 50,000 with -m soak."""
    await tenant_job.batch_trigger([{}] * backlog, concurrency_key="tenant-a")
    b = await tenant_job.trigger({}, concurrency_key="tenant-b")
    await _run_until_started(_worker(store, concurrency=2), "tenant-b", timeout=600)
    position = STARTS.index("tenant-b") + 1
    print(f"fairness: tenant B's single run started {position} behind a {backlog:,} backlog")
    assert position <= 3
    assert client.retrieve(b.id).status == RunStatus.COMPLETED
