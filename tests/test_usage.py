"""Usage and advice on both backends, with the fake clock: honest run-minutes (parked
waits and queued time are not billed), rollups folded once behind their watermark and
kept when runs are deleted, one workload per verdict of ``outlast advise``, and spikes
explained (a missing idempotency key, a retry storm; steady load flags nothing)."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from outlast import Retry, queue, step, task, wait
from outlast._advise import advise
from outlast._clock import FakeClock
from outlast._usage import find_spikes, usage_report
from outlast.cli import main
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.server.dashboard import mount
from outlast.server.dashboard._timeline import attempts
from outlast.store import open_store
from outlast.store._usage_base import DAY
from outlast.store.base import Store
from tests.apps import usage_app  # noqa: F401 - registers usage-killed
from tests.conftest import spawn_worker

CLOCK: dict[str, FakeClock] = {}
FAIL: dict[str, int] = {}  # run payload tag -> attempts still to fail


def _spend(seconds: float) -> float:
    """A step body that takes ``seconds`` on the fake clock."""
    CLOCK["c"].advance(seconds)
    return seconds


def _flaky(tag: str, seconds: float) -> float:
    CLOCK["c"].advance(seconds)
    if FAIL.get(tag, 0) > 0:
        FAIL[tag] -= 1
        raise ConnectionError("ServiceUnavailable: the email API answered 503")
    return seconds


@pytest.fixture(autouse=True)
def _clock(clock: FakeClock) -> None:
    CLOCK["c"] = clock
    FAIL.clear()


fast_retry = Retry(max_attempts=5, factor=2.0, min_delay=1.0, max_delay=4.0, jitter=False)
limited = queue("usage-limited", concurrency_limit=1)


@task(id="usage-sleeper")
async def sleeper(payload: dict[str, Any]) -> str:
    await step.run("before", _spend, 2.0)
    await wait.sleep(timedelta(hours=1))
    await step.run("after", _spend, 2.0)
    return "done"


@task(id="usage-export")
async def export(payload: dict[str, Any]) -> int:
    return int(await step.run("export", _spend, 900.0))


@task(id="usage-signup", retry=fast_retry)
async def signup(payload: dict[str, Any]) -> str:
    await step.run("charge", _spend, 0.2)
    await step.run("provision", _flaky, payload["tag"], 0.2)
    await step.run("welcome", _spend, 0.1)
    return "ok"


@task(id="usage-child", queue=limited)
async def child(payload: dict[str, Any]) -> None:
    await step.run("send", _spend, 0.05)


@task(id="usage-fanout")
async def fanout(payload: dict[str, Any]) -> None:
    for i in range(3):
        await child.trigger({"i": i})


@task(id="usage-approval")
async def approval(payload: dict[str, Any]) -> bool:
    token = await wait.create_token(timeout=timedelta(days=3))
    result = await wait.for_token(token)
    return bool(result.ok)


@task(id="usage-trivial")
async def trivial(payload: dict[str, Any]) -> int:
    return int(await step.run("one", _spend, 0.05))


@task(id="usage-nightly", cron="0 3 * * *")
async def nightly(payload: Any) -> int:
    return int(await step.run("one", _spend, 0.05))


@task(id="usage-rare")
async def rare(payload: dict[str, Any]) -> int:
    return int(await step.run("one", _spend, 0.05))


@task(id="usage-steady")
async def steady(payload: dict[str, Any]) -> int:
    return int(await step.run("one", _spend, 1.0))


@task(id="usage-flaky", retry=fast_retry)
async def flaky(payload: dict[str, Any]) -> float:
    return float(await step.run("call", _flaky, payload["tag"], 1.0))


ALL = [sleeper, export, signup, child, fanout, approval, trivial, nightly, rare, steady, flaky]


async def _drain(workers: Any, store: Store, client: Client, clock: FakeClock) -> None:
    """Run until nothing is left: retries' backoffs and tokens pass on the fake clock."""
    # One run at a time, none held ready: a step that moves the fake clock 15 minutes
    # must not be billed to runs claimed alongside it.
    worker = workers(*ALL, concurrency=1, prefetch=0, lease_seconds=7200.0)
    for _ in range(30):
        await worker.run_until_idle()
        for token in client.list_tokens(status="pending"):
            client.complete_token(token.id, {"approved": True})
        runs = [r for r in client.list_runs(limit=1000) if not r.is_final]
        if not runs:
            return
        clock.advance(5.0)
    raise AssertionError(f"runs left unfinished: {runs}")


async def test_a_durable_hour_between_two_2s_steps_bills_4s_not_an_hour(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    handle = await sleeper.trigger({})
    worker = workers(sleeper)
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(3601)
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.active_seconds == pytest.approx(4.0, abs=1e-6)
    # Recorded per attempt: its one attempt executed 4 s (the run page's Attempts table).
    (attempt,) = attempts(run, store.journal(run.id), store.events(run.id))
    assert attempt["active_seconds"] == pytest.approx(4.0, abs=1e-6)
    report = usage_report(store, "dev", since=DAY)
    (row,) = report["tasks"]
    assert row["run_minutes"] == pytest.approx(4 / 60, abs=1e-5)  # 4 s, not an hour
    assert row["waited_minutes"] == pytest.approx(3601 / 60, abs=1e-3)
    assert row["steps_executed"] == 2 and row["waits"] == {"sleep": 1}
    # Folded into the rollups, the figures stay the same: counted once, not twice.
    clock.advance(120)
    assert store.aggregate_usage() == 1
    assert store.aggregate_usage() == 0
    again = usage_report(store, "dev", since=DAY)["tasks"][0]
    assert again == row


async def test_rollups_survive_deleting_the_runs_they_came_from(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    for i in range(3):
        await trivial.trigger({"i": i})
    await _drain(workers, store, client, clock)
    before = usage_report(store, "dev", since=DAY)["tasks"]
    clock.advance(120)
    assert store.aggregate_usage() == 3
    with store._transaction() as tx:  # type: ignore[attr-defined]  # retention, by hand
        store._raw(tx, "DELETE FROM journal", {})  # type: ignore[attr-defined]
        store._raw(tx, "DELETE FROM runs", {})  # type: ignore[attr-defined]
    after = usage_report(store, "dev", since=DAY)["tasks"]
    assert after == before and after[0]["runs"] == 3


def _by_task(advice: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["task_id"]: a for a in advice}


async def test_advise_one_workload_per_verdict(
    store: Store, client: Client, clock: FakeClock, workers: Any, capsys: Any, db_url: str
) -> None:
    for i in range(6):
        await export.trigger({"i": i})
        if i % 3 == 0:
            FAIL[f"s{i}"] = 1  # provisioning fails once: a retry replays the charge
        await signup.trigger({"tag": f"s{i}"})
        await fanout.trigger({"i": i})
        await approval.trigger({"i": i})
        await trivial.trigger({"i": i})
        await nightly.trigger({"i": i})
    for i in range(2):
        await rare.trigger({"i": i})
    await _drain(workers, store, client, clock)

    assert main(["advise", "--json", "--database-url", db_url, "--min-runs", "5",
                 "--since", "3650d"]) == 0
    got = _by_task(json.loads(capsys.readouterr().out))
    expected = {
        "usage-export": ([1], "needs_outlast"),
        "usage-signup": ([2, 3], "needs_outlast"),
        "usage-fanout": ([4], "needs_outlast"),
        "usage-approval": ([5], "needs_outlast"),
        "usage-trivial": ([], "inline"),
        "usage-nightly": ([], "cron"),
    }
    for task_id, (tripped, verdict) in expected.items():
        a = got[task_id]
        assert (a["tripped"], a["verdict"]) == (tripped, verdict), (task_id, a["summary"], got)
    assert got["usage-export"]["summary"].startswith("needs outlast: 1 (p95 ")
    assert "33% of runs succeeded on a retry" in got["usage-signup"]["summary"]
    assert got["usage-signup"]["conditions"][1]["figures"]["steps_replayed"] == 2  # charges
    assert got["usage-trivial"]["summary"].startswith("trips none over 6 runs: p95 ")
    assert "inline in the request, or after the response" in got["usage-trivial"]["summary"]
    assert "plain cron job" in got["usage-nightly"]["summary"]
    assert got["usage-rare"]["verdict"] == "too_few_runs"
    assert "too few runs" in got["usage-rare"]["summary"]
    # The rollups behind the verdicts: child runs created, steps executed and replayed.
    figures = {t["task_id"]: t for t in usage_report(store, "dev", since=3650 * DAY)["tasks"]}
    assert figures["usage-fanout"]["child_runs"] == 18  # 3 per run, 6 runs
    assert figures["usage-signup"]["steps_executed"] == 18  # 3 journaled per run
    assert figures["usage-signup"]["steps_replayed"] == 2
    # The same from the function, for one task.
    (one,) = advise(store, "dev", since=3650 * DAY, task_id="usage-export", min_runs=5)
    assert one.tripped == [1]


async def _days_of(
    store: Store, client: Client, clock: FakeClock, workers: Any, days: list[list[Any]]
) -> None:
    """Each inner list is one day's triggers: (task, payload) pairs."""
    for triggers in days:
        for t, payload in triggers:
            await t.trigger(payload)
        await _drain(workers, store, client, clock)
        clock.advance(DAY)


async def test_a_day_at_5x_with_repeated_payloads_points_at_a_missing_idempotency_key(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    clock.set(1_800_000_000.0 // DAY * DAY + 3600)  # 01:00 UTC
    week = [[(steady, {"n": d * 10 + i}) for i in range(4)]
            + [(trivial, {"n": d * 10 + i}) for i in range(4)] for d in range(7)]
    await _days_of(store, client, clock, workers, week)
    assert find_spikes(store, "dev") == []  # steady load: nothing flagged
    today = [(steady, {"same": 1}) for _ in range(20)] + [(trivial, {"n": i}) for i in range(4)]
    for t, payload in today:
        await t.trigger(payload)
    await _drain(workers, store, client, clock)
    (spike,) = find_spikes(store, "dev")
    assert (spike.task_id, spike.metric, spike.value, spike.median) == ("usage-steady", "runs",
                                                                         20, 4)
    assert spike.kinds[0] == "missing_idempotency_key"
    assert "19 of 20 runs repeat a payload" in spike.causes[0]
    report = usage_report(store, "dev", since=8 * DAY)
    assert [s["task_id"] for s in report["spikes"]] == ["usage-steady"]


async def test_a_retry_storm_is_flagged_as_such(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    clock.set(1_800_000_000.0 // DAY * DAY + 3600)
    week = [[(flaky, {"tag": f"d{d}-{i}"}) for i in range(4)] for d in range(7)]
    await _days_of(store, client, clock, workers, week)
    for i in range(4):
        FAIL[f"storm-{i}"] = 3  # three failed attempts each, then success
        await flaky.trigger({"tag": f"storm-{i}"})
    await _drain(workers, store, client, clock)
    spikes = find_spikes(store, "dev")
    assert len(spikes) == 1, spikes
    (spike,) = spikes
    assert (spike.task_id, spike.metric) == ("usage-flaky", "run-minutes")
    assert spike.kinds == ["retry_storm"]
    assert "4.0 attempts per run (against 1.0 before), mostly `ConnectionError`" in spike.causes[0]


def test_a_killed_attempt_is_billed_once_and_the_rollups_stay_exact(db_url: str) -> None:
    """A real worker is SIGKILLed mid-step; another reaps it and runs the retry. The lost
    attempt's time counts (up to its reaping) once, and the rollups, folded by the
    workers' schedulers and again here, agree with the run to the last digit."""
    store = open_store(db_url)  # the real clock: real processes
    client = Client(store=store, env="dev")
    try:
        handle = client.trigger("usage-killed", {"first": 60.0, "then": 0.5})
        first = spawn_worker(db_url, "tests.apps.usage_app")
        try:
            _wait_for(lambda: client.retrieve(handle.id).status == RunStatus.EXECUTING)
            time.sleep(1.5)  # inside the step's first attempt
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        second = spawn_worker(db_url, "tests.apps.usage_app")
        try:
            _wait_for(lambda: client.retrieve(handle.id).is_final, timeout=60)
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait()
        run = client.retrieve(handle.id)
        assert (run.status, run.attempt) == (RunStatus.COMPLETED, 2), run.error
        assert run.started_at is not None and run.finished_at is not None
        with store._transaction() as tx:  # type: ignore[attr-defined]
            (row,) = store._raw(  # type: ignore[attr-defined]
                tx, "SELECT active_seconds FROM runs WHERE id = :id", {"id": handle.id}
            )
        active = float(row["active_seconds"])
        # 1.5 s or more before the kill, 0.5 s after; never more than the run's wall time
        # (attempts do not overlap), so nothing was counted twice.
        assert 2.0 <= active <= run.finished_at - run.started_at
        # Per attempt: the killed one (ended by its reaping, its event records its time)
        # and the retry each once, adding up to the run's.
        killed, retried = attempts(run, store.journal(run.id), store.events(run.id))
        assert killed["outcome"] == "failed" and retried["outcome"] == "completed"
        assert killed["active_seconds"] >= 1.5 and retried["active_seconds"] >= 0.5
        assert killed["active_seconds"] + retried["active_seconds"] == pytest.approx(active)
        assert retried["active_seconds"] < killed["active_seconds"]
        store.aggregate_usage(grace=0.0)
        assert store.aggregate_usage(grace=0.0) == 0
        (day,) = store.usage_days("dev", run.created_at - 1)
        assert (day.runs, day.attempts, day.retried, day.recovered) == (1, 2, 1, 1)
        assert day.active_seconds == pytest.approx(active, abs=1e-9)
    finally:
        store.close()


def _wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_usage_and_advice_over_http_and_on_the_dashboard(
    store: Store, client: Client, clock: FakeClock, workers: Any, monkeypatch: Any
) -> None:
    clock.set(1_800_000_000.0 // DAY * DAY + 3600)
    week = [[(steady, {"n": d * 10 + i}) for i in range(2)] for d in range(7)]
    await _days_of(store, client, clock, workers, week)
    for _ in range(10):
        await steady.trigger({"same": 1})
    await export.trigger({})
    await _drain(workers, store, client, clock)
    monkeypatch.setenv("OUTLAST_PRICE_PER_RUN_MINUTE", "0.5")
    app = create_app(store, dashboard=False)
    mount(app, store, require_login=False)
    key = create_key(store, "dev").secret
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://outlast.test",
        headers={"Authorization": f"Bearer {key}"},
    ) as http:
        resp = await http.get("/api/v1/usage", params={"since": "30d"})
        assert resp.status_code == 200, resp.text
        usage = resp.json()
        by_task = {t["task_id"]: t for t in usage["tasks"]}
        assert by_task["usage-steady"]["runs"] == 24
        assert by_task["usage-export"]["run_minutes"] == pytest.approx(15.0)
        assert by_task["usage-export"]["cost"] == pytest.approx(7.5)  # 15 min at 0.5
        assert [s["task_id"] for s in usage["spikes"]] == ["usage-steady"]
        bad = await http.get("/api/v1/usage", params={"since": "lots"})
        assert bad.status_code == 422 and "since" in bad.text
        advice = (await http.get("/api/v1/advise", params={"minRuns": 1})).json()["data"]
        assert {a["task_id"]: a["tripped"] for a in advice}["usage-export"] == [1]
        page = (await http.get("/usage")).text
        assert "<svg" in page and "usage-steady" in page and 'id="spike-usage-steady"' in page
        assert "missing idempotency key" in page
        page = (await http.get("/advice", params={"min_runs": 1})).text
        assert 'id="advice-usage-export"' in page and "needs outlast: 1 (p95 " in page


async def test_time_a_queue_sits_at_its_limit_is_sampled_for_condition_4(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    worker = workers(child)
    await worker.start(background=False)  # declares the queue's limit of 1
    for i in range(2):
        await child.trigger({"i": i})
    store.aggregate_usage()  # the first sample: nothing to count yet
    with store._transaction() as tx:  # type: ignore[attr-defined]  # one run holds the slot
        store._raw(tx, "UPDATE queue_slots SET executing = 1 WHERE queue = 'usage-limited'", {})  # type: ignore[attr-defined]
    clock.advance(30)
    store.aggregate_usage()
    clock.advance(30)
    store.aggregate_usage()
    assert store.queue_saturation("dev", clock.now() - DAY) == {"usage-limited": 60.0}
    (a,) = advise(store, "dev", since=DAY, task_id="usage-child", min_runs=1)
    c4 = a.conditions[3]
    assert c4.tripped and "usage-limited 1 min" in c4.evidence


async def test_each_attempt_records_the_time_it_executed(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    """Provisioning fails once: attempt 1 ran charge and provision (0.4 s), attempt 2
    replayed charge from the journal and ran provision and welcome (0.3 s). The backoff
    between them (queued time) is billed to neither."""
    FAIL["per-attempt"] = 1
    handle = await signup.trigger({"tag": "per-attempt"})
    await _drain(workers, store, client, clock)
    run = client.retrieve(handle.id)
    assert (run.status, run.attempt) == (RunStatus.COMPLETED, 2)
    events = store.events(run.id)
    (ended,) = [e for e in events if e.kind == "attempt_failed"]
    assert ended.attempt == 1 and ended.active_seconds == pytest.approx(0.4, abs=1e-6)
    first, second = attempts(run, store.journal(run.id), events)
    assert first["active_seconds"] == pytest.approx(0.4, abs=1e-6)
    assert second["active_seconds"] == pytest.approx(0.3, abs=1e-6)
    assert run.active_seconds == pytest.approx(0.7, abs=1e-6)
    assert run.queued_seconds >= 1.0  # the backoff before attempt 2 sat queued
    # The run's JSON and the CLI's attempt lines carry the same figures.
    from outlast._cli_format import attempt_lines
    from outlast.server.serialize import event_json, run_json

    assert run_json(run)["activeMs"] == 700
    assert event_json(ended)["activeSeconds"] == pytest.approx(0.4, abs=1e-6)
    lines = attempt_lines(run, store.journal(run.id), events)
    assert "active 0.400s" in lines[0] and "active 0.300s" in lines[1]
