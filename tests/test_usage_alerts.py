"""Usage spikes as an alert kind, and the rollups' other promises checked against the real
parts that could break them: ``usage.spike`` raised once per task and period with its
evidence (steady load raises none); rollups kept when retention prunes their runs; peak
concurrency sampled; one tenant dominating flagged; ``outlast usage`` on the command
line. All on the fake clock, both backends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from outlast import Retry, step, task
from outlast._alerts import create_rule, summary_line
from outlast._clock import FakeClock
from outlast._retention import prune
from outlast._usage import SpikeAlerts, find_spikes, usage_report
from outlast.cli import main
from outlast.client import Client
from outlast.store._usage_base import DAY
from outlast.store.base import Store

CLOCK: dict[str, FakeClock] = {}
T0 = 1_800_000_000.0 // DAY * DAY + 3600  # 01:00 UTC


def _spend(seconds: float) -> float:
    CLOCK["c"].advance(seconds)
    return seconds


@pytest.fixture(autouse=True)
def _clock(clock: FakeClock) -> None:
    CLOCK["c"] = clock
    clock.set(T0)


@task(id="spike-steady")
async def steady(payload: dict[str, Any]) -> float:
    return float(await step.run("one", _spend, 1.0))


@task(id="spike-other")
async def other(payload: dict[str, Any]) -> float:
    return float(await step.run("one", _spend, 0.5))


async def _day(store: Store, client: Client, clock: FakeClock, workers: Any,
               triggers: list[tuple[Any, dict[str, Any], str | None]]) -> None:
    for t, payload, ckey in triggers:
        await t.trigger(payload, concurrency_key=ckey) if ckey else await t.trigger(payload)
    worker = workers(steady, other, concurrency=1, prefetch=0)
    await worker.run_until_idle()
    assert not [r for r in client.list_runs(limit=1000) if not r.is_final]


async def _steady_week(store: Store, client: Client, clock: FakeClock, workers: Any) -> None:
    for d in range(7):
        await _day(store, client, clock, workers,
                   [(steady, {"n": d * 10 + i}, None) for i in range(3)]
                   + [(other, {"n": d * 10 + i}, None) for i in range(3)])
        clock.advance(DAY)


@pytest.mark.usefixtures("encryption_key")  # the rule's secret is sealed
async def test_a_spike_raises_one_usage_spike_alert_with_its_evidence_and_steady_load_none(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    rule, _ = create_rule(store, clock, "dev", event="usage.spike",
                          webhook_url="http://alerts.invalid/hook")
    await _steady_week(store, client, clock, workers)
    store.aggregate_usage()
    schedulers = [SpikeAlerts(store, every=0.0), SpikeAlerts(store, every=0.0)]
    assert [s.step() for s in schedulers] == [0, 0]  # steady load: nothing raised
    assert store.list_alert_deliveries("dev") == []
    # Today: 5x the runs, one payload repeated, no idempotency key.
    await _day(store, client, clock, workers, [(steady, {"same": 1}, None)] * 15)
    raised = [s.step() for s in schedulers] + [s.step() for s in schedulers]
    assert sum(raised) == 1  # once per task and period, however many schedulers
    (delivery,) = store.list_alert_deliveries("dev")
    assert delivery.event == "usage.spike" and delivery.rule_id == rule.id
    data = delivery.payload["data"]
    assert (data["task_id"], data["metric"], data["value"]) == ("spike-steady", "runs", 15)
    assert data["kinds"][0] == "missing_idempotency_key"
    assert "missing idempotency key: 14 of 15 runs repeat a payload" in data["causes"][0]
    assert "usage spike: spike-steady: 15 runs" in summary_line(delivery.payload)
    # The next day is a new period: the spike there (if any) would raise again; today's
    # stays raised once even from a new process (the key is in the store).
    assert SpikeAlerts(store, every=0.0).step() == 0


async def test_rollups_survive_retention_pruning_the_runs_they_came_from(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    await _day(store, client, clock, workers,
               [(steady, {"n": i}, None) for i in range(4)])
    before = usage_report(store, "dev", since=DAY)["tasks"]
    assert before[0]["runs"] == 4
    clock.advance(40 * DAY)  # past the 30-day default; nothing folded by hand
    report = prune(store)
    assert report.runs == 4 and client.list_runs(limit=10) == []
    after = usage_report(store, "dev", since=41 * DAY)["tasks"]
    assert after == before


async def test_peak_concurrency_and_one_dominant_tenant(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    # Peak concurrency: the fold's sample counts runs executing at that moment.
    ids = [(await steady.trigger({"n": i})).id for i in range(3)]
    with store._transaction() as tx:  # type: ignore[attr-defined]  # three runs executing
        store._raw(tx, "UPDATE runs SET status = 'EXECUTING'", {})  # type: ignore[attr-defined]
    store.aggregate_usage()
    with store._transaction() as tx:  # type: ignore[attr-defined]
        store._raw(tx, "UPDATE runs SET status = 'EXECUTING' WHERE id = :id",  # type: ignore[attr-defined]
                   {"id": ids[0]})
        store._raw(tx, "UPDATE runs SET status = 'QUEUED' WHERE id <> :id",  # type: ignore[attr-defined]
                   {"id": ids[0]})
    store.aggregate_usage()  # a later, lower sample does not lower the day's peak
    (day,) = store.usage_days("dev", T0 - DAY)
    assert day.peak_concurrency == 3
    with store._transaction() as tx:  # type: ignore[attr-defined]
        store._raw(tx, "DELETE FROM runs", {})  # type: ignore[attr-defined]
        store._raw(tx, "DELETE FROM usage_daily", {})  # type: ignore[attr-defined]
    # One tenant: a week of other's runs, then a day where org:42 triggers 10 of 12.
    await _steady_week(store, client, clock, workers)
    await _day(store, client, clock, workers,
               [(other, {"n": 100 + i}, "org:42") for i in range(10)]
               + [(other, {"n": 200 + i}, "org:7") for i in range(2)])
    (spike,) = find_spikes(store, "dev")
    assert spike.task_id == "spike-other" and "one_concurrency_key" in spike.kinds
    assert any("org:42 is 83%" in c for c in spike.causes)


async def test_outlast_usage_on_the_command_line(
    store: Store, client: Client, clock: FakeClock, workers: Any, capsys: Any, db_url: str
) -> None:
    await _day(store, client, clock, workers,
               [(steady, {"n": i}, None) for i in range(2)] + [(other, {"n": 1}, None)])
    assert main(["usage", "--json", "--database-url", db_url, "--since", "2d",
                 "--by", "week", "--task", "spike-steady"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["tasks"]
    assert (row["task_id"], row["runs"]) == ("spike-steady", 2)
    assert row["run_minutes"] == pytest.approx(2 / 60, abs=1e-5)
    assert out["by"] == "week"
    assert main(["usage", "--database-url", db_url, "--since", "2d"]) == 0
    text = capsys.readouterr().out
    assert "spike-steady" in text and "spike-other" in text
    assert main(["usage", "--database-url", db_url, "--since", "lots"]) != 0
    assert "since" in capsys.readouterr().err


@task(id="spike-doomed", retry=Retry(max_attempts=1))
async def doomed(payload: dict[str, Any]) -> None:
    await step.run("one", _spend, 0.25)
    raise RuntimeError("no")


async def test_failures_and_a_schedule_firing_more_often(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    await doomed.trigger({})
    worker = workers(doomed, concurrency=1, prefetch=0)
    await worker.run_until_idle()
    (day,) = store.usage_days("dev", T0 - DAY, "spike-doomed")
    assert (day.runs, day.failed, day.completed) == (1, 1, 0)
    assert day.active_seconds == pytest.approx(0.25, abs=1e-6)
    # A schedule of spike-other fired once a day for a week, then hourly today.
    with store._transaction() as tx:  # type: ignore[attr-defined]
        store._raw(tx, "INSERT INTO schedules (id, env, task_id, type, cron, timezone, "  # type: ignore[attr-defined]
                   "active, created_at, updated_at) VALUES ('sched_x', 'dev', 'spike-other', "
                   "'IMPERATIVE', '0 * * * *', 'UTC', 1, :t, :t)", {"t": T0})
    slot = 0

    def fired(at: float) -> None:
        nonlocal slot
        slot += 1
        with store._transaction() as tx:  # type: ignore[attr-defined]
            store._raw(tx, "INSERT INTO schedule_slots (schedule_id, slot, run_id, fired_at) "  # type: ignore[attr-defined]
                       "VALUES ('sched_x', :slot, :run, :at)",
                       {"slot": slot, "run": f"run_{slot}", "at": at})

    for d in range(7):
        await _day(store, client, clock, workers, [(other, {"n": d}, None)] * 2)
        fired(clock.now())
        clock.advance(DAY)
    for h in range(5):
        await _day(store, client, clock, workers, [(other, {"h": h}, None)] * 2)
        fired(clock.now())
        clock.advance(600)
    (spike,) = find_spikes(store, "dev")
    assert spike.task_id == "spike-other" and "schedule" in spike.kinds
    assert any("a schedule fires more often: 5 slots" in c for c in spike.causes)
