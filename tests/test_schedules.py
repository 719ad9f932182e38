"""Cron schedules end to end, on SQLite and PostgreSQL, with a fake clock.

C6 (T28): three schedulers, each on its own store connection (one clock 5 s ahead), tick
through 1,440 simulated minutes of an every-minute schedule: each slot fires exactly once.
T20/T21: DST in real zones and clock jumps follow the written policy; after downtime only
the latest missed slot fires, once. Plus: declarative schedules follow the code on worker
start, imperative ones are upserted by deduplication key and carry tenants' external ids,
bad cron strings name the field, and the HTTP API, the clients and the CLI agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast import FakeClock, ScheduledPayload, Worker, _cli_schedules, cron, schedules, task
from outlast._errors import InvalidState, ScheduleNotFound, UnknownTask, ValidationError
from outlast._schedule_firing import fire_due
from outlast.cli import main as cli_main
from outlast.client import AsyncClient, Client, set_default_client
from outlast.runs import Run, RunStatus
from outlast.scheduler import Scheduler
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import Schedule, Store

UTC = dt.UTC


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@task(id="cron-every-minute")
async def every_minute(payload: ScheduledPayload) -> dict[str, Any]:
    return {
        "slot": payload.timestamp.isoformat(),
        "local": payload.local_timestamp.isoformat(),
        "previous": payload.last_timestamp.isoformat() if payload.last_timestamp else None,
        "external_id": payload.external_id,
        "upcoming": len(payload.upcoming),
    }


@task(id="cron-tenant")
async def tenant_job(payload: ScheduledPayload) -> str | None:
    return payload.external_id


@task(id="cron-declared", cron="0 9 * * MON", timezone="Europe/Paris")
async def declared(payload: ScheduledPayload) -> str:
    return payload.type


TASKS = {t.id: t for t in (every_minute, tenant_job, declared)}


class SkewedClock:
    """Another scheduler host's clock: the shared fake clock plus a skew."""

    def __init__(self, base: FakeClock, skew: float) -> None:
        self.base, self.skew = base, skew

    def now(self) -> float:
        return self.base.now() + self.skew


def scheduled_runs(store: Store, task_id: str) -> list[Run]:
    runs = store.list_runs("dev", task_id=task_id, limit=1000)
    return sorted(runs, key=lambda r: r.payload["timestamp"])


def fired(store: Store, task_id: str) -> list[str]:
    return [r.payload["timestamp"][:19] + "Z" for r in scheduled_runs(store, task_id)]


@pytest.fixture
async def worker(store: Store) -> AsyncIterator[Worker]:
    """A worker serving the test tasks; starting it publishes them (and syncs schedules)."""
    w = Worker(store, tasks=TASKS, env="dev", life_lock=False, scheduler=False)
    await w.start(background=False)
    yield w
    await w.shutdown()


# -- C6: exactly once, however many schedulers ------------------------------------------------


async def test_three_schedulers_fire_each_of_1440_slots_once(
    store: Store, db_url: str, clock: FakeClock, client: Client, worker: Worker
) -> None:
    clock.set(at("2026-06-01T00:00:30Z"))
    s = client.create_schedule("cron-every-minute", "* * * * *")
    assert s.next_run_at == at("2026-06-01T00:01:00Z")
    others = [open_store(db_url, clock), open_store(db_url, SkewedClock(clock, 5.0))]
    schedulers = [Scheduler(x) for x in (store, *others)]
    try:
        await asyncio.gather(*(sch.tick() for sch in schedulers))  # the whole tick works
        for _ in range(1440):
            clock.advance(60)
            # The tick's cron step (its timers and reapers have nothing to do here).
            await asyncio.gather(*(sch.fire_schedules() for sch in schedulers))
    finally:
        for x in others:
            x.close()
    rows = sorted(store.schedule_slots(s.id, 5000), key=lambda row: row["slot"])
    expected = [at("2026-06-01T00:01:00Z") + 60 * i for i in range(1440)]
    assert [row["slot"] for row in rows] == expected  # each slot once: none missed or twice
    counts = store.count_runs("dev")["cron-every-minute"]
    assert sum(counts.values()) == 1440
    runs = store.get_runs("dev", [row["run_id"] for row in rows])
    assert [r.payload["timestamp"] for r in runs] == [
        iso(t).replace("Z", ".000Z") for t in expected
    ]
    last = store.get_schedule("dev", s.id)
    assert last is not None and last.last_run_at == expected[-1]
    assert last.next_run_at == expected[-1] + 60


async def test_the_slot_key_refuses_a_second_fire_of_the_same_slot(
    store: Store, clock: FakeClock, client: Client, worker: Worker
) -> None:
    """The primary key holds even when the compare and set is fooled (a schedule moved
    back by hand): the slot is not fired twice."""
    clock.set(at("2026-06-01T10:00:30Z"))
    s = client.create_schedule("cron-every-minute", "*/10 * * * *")
    clock.set(at("2026-06-01T10:10:05Z"))
    assert fire_due(store) == 1
    moved = store.get_schedule("dev", s.id)
    assert moved is not None
    store.save_schedule(dataclasses.replace(moved, next_run_at=at("2026-06-01T10:10:00Z")))
    assert fire_due(store) == 0
    assert fired(store, "cron-every-minute") == ["2026-06-01T10:10:00Z"]
    after = store.get_schedule("dev", s.id)
    assert after is not None and after.next_run_at == at("2026-06-01T10:20:00Z")


# -- T20, T21: clock jumps, downtime and DST ---------------------------------------------------


async def test_downtime_fires_only_the_latest_missed_slot_once(
    store: Store, clock: FakeClock, client: Client, worker: Worker
) -> None:
    clock.set(at("2026-06-01T09:59:00Z"))
    s = client.create_schedule("cron-every-minute", "0 * * * *")
    clock.set(at("2026-06-01T10:00:01Z"))
    assert fire_due(store) == 1
    # Every scheduler is down from 10:00 to 15:40: 11:00 … 15:00 were missed.
    clock.set(at("2026-06-01T15:40:00Z"))
    others = [Scheduler(store), Scheduler(store)]
    await asyncio.gather(*(sch.tick() for sch in others))
    assert fire_due(store) == 0
    assert fired(store, "cron-every-minute") == ["2026-06-01T10:00:00Z", "2026-06-01T15:00:00Z"]
    latest = scheduled_runs(store, "cron-every-minute")[-1].payload
    assert latest["lastTimestamp"] == "2026-06-01T10:00:00.000Z"  # the last slot that fired
    assert latest["upcoming"][:2] == ["2026-06-01T16:00:00.000Z", "2026-06-01T17:00:00.000Z"]
    after = store.get_schedule("dev", s.id)
    assert after is not None and after.next_run_at == at("2026-06-01T16:00:00Z")


async def test_clock_jumps_back_then_forward(
    store: Store, clock: FakeClock, client: Client, worker: Worker
) -> None:
    """T20: back 1 h, then forward 2 h: no slot twice, missed ones per the policy."""
    clock.set(at("2026-06-01T09:59:00Z"))
    client.create_schedule("cron-every-minute", "*/15 * * * *")
    for _ in range(16):  # 09:59 -> 10:31, a tick every 2 minutes
        clock.advance(120)
        fire_due(store)
    clock.advance(-3600)  # 09:31: nothing is due until 10:45
    for _ in range(10):
        clock.advance(60)
        assert fire_due(store) == 0
    clock.advance(7200)  # 11:41: 10:45 … 11:30 missed; the latest fires
    fire_due(store)
    assert fired(store, "cron-every-minute") == [
        "2026-06-01T10:00:00Z", "2026-06-01T10:15:00Z", "2026-06-01T10:30:00Z",
        "2026-06-01T11:30:00Z",
    ]


async def run_days(store: Store, clock: FakeClock, start: str, days: int) -> None:
    clock.set(at(start))
    for _ in range(days * 24):  # a tick an hour is plenty: the slot fired is computed
        clock.advance(3600)
        fire_due(store)


@pytest.mark.parametrize("season", ["spring", "fall"])
async def test_dst_fires_once_per_day_in_berlin_and_new_york(
    store: Store, clock: FakeClock, client: Client, worker: Worker, season: str
) -> None:
    """T21: Europe/Berlin ``30 2 * * *`` and America/New_York ``30 1 * * *`` (and ``30 2``)
    across the 2026 transitions, per the policy: once a day, a skipped time at the first
    instant after the gap, a repeated time at its first occurrence."""
    start = {"spring": "2026-03-06T12:00:00Z", "fall": "2026-10-23T12:00:00Z"}[season]
    clock.set(at(start))
    made = {
        name: client.create_schedule("cron-tenant", expr, timezone=zone, external_id=name)
        for name, expr, zone in [
            ("berlin", "30 2 * * *", "Europe/Berlin"),
            ("ny-0130", "30 1 * * *", "America/New_York"),
            ("ny-0230", "30 2 * * *", "America/New_York"),
        ]
    }
    await run_days(store, clock, start, 24 if season == "spring" else 10)
    by_tenant: dict[str, list[str]] = {}
    for r in scheduled_runs(store, "cron-tenant"):
        p = ScheduledPayload.model_validate(r.payload)
        assert p.schedule_id == made[str(p.external_id)].id
        by_tenant.setdefault(str(p.external_id), []).append(p.local_timestamp.isoformat())
    days = {k: [v for v in vs if v[5:7] in ("03", "10", "11")] for k, vs in by_tenant.items()}
    for name, got in days.items():
        assert len(got) == len({g[:10] for g in got}), f"{name} fired twice in a day: {got}"
    if season == "spring":
        assert "2026-03-29T03:00:00+02:00" in days["berlin"]  # 02:30 was skipped
        assert "2026-03-28T02:30:00+01:00" in days["berlin"]
        assert "2026-03-30T02:30:00+02:00" in days["berlin"]
        assert "2026-03-08T01:30:00-05:00" in days["ny-0130"]
        assert "2026-03-08T03:00:00-04:00" in days["ny-0230"]  # 02:30 was skipped
        assert len(days["berlin"]) == 24 and len(days["ny-0230"]) == 24
    else:
        assert "2026-10-25T02:30:00+02:00" in days["berlin"]  # the first 02:30 only
        assert "2026-10-25T02:30:00+01:00" not in days["berlin"]
        assert "2026-11-01T01:30:00-04:00" in days["ny-0130"]
        assert "2026-11-01T01:30:00-05:00" not in days["ny-0130"]
        assert len(days["berlin"]) == 10 and len(days["ny-0130"]) == 10


# -- imperative schedules: dedup, tenants, validation -----------------------------------------


async def test_a_deduplication_key_upserts(
    store: Store, clock: FakeClock, client: Client, worker: Worker
) -> None:
    clock.set(at("2026-06-01T08:00:00Z"))
    a = client.create_schedule("cron-tenant", "0 9 * * *", deduplication_key="daily")
    b = client.create_schedule("cron-tenant", "0 9 * * *", deduplication_key="daily")
    assert a.id == b.id and b.next_run_at == at("2026-06-01T09:00:00Z")
    c = client.create_schedule("cron-tenant", "0 10 * * *", timezone="Europe/Paris",
                               deduplication_key="daily", external_id="org_1")
    assert c.id == a.id and c.cron == "0 10 * * *" and c.external_id == "org_1"
    # 10:00 in Paris is 08:00 UTC, which is now: the next slot is tomorrow's.
    assert c.next_run_at == at("2026-06-02T08:00:00Z")
    assert len(client.list_schedules(type="IMPERATIVE")) == 1

    # Many concurrent creates with one key: one schedule.
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            client.create_schedule("cron-tenant", f"{i} 3 * * *", deduplication_key="racy")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(client.list_schedules(type="IMPERATIVE")) == 2


async def test_per_tenant_schedules_carry_their_external_ids(
    store: Store, clock: FakeClock, client: Client, worker: Worker
) -> None:
    clock.set(at("2026-06-01T06:00:00Z"))
    zones = {"org_1": "Europe/Paris", "org_2": "America/New_York", "org_3": "Asia/Tokyo"}
    for org, zone in zones.items():
        for _ in range(2):  # on every deploy: still one each
            client.create_schedule(tenant_job, "0 9 * * *", timezone=zone, external_id=org,
                                   deduplication_key=f"tenant:{org}")
    assert len(client.list_schedules(task="cron-tenant")) == 3
    only = client.list_schedules(external_id="org_2")
    assert [s.timezone for s in only] == ["America/New_York"]
    clock.set(at("2026-06-02T06:00:00Z"))  # past 09:00 in Tokyo, Paris and New York
    assert fire_due(store) == 3
    await worker.run_until_idle()
    runs = scheduled_runs(store, "cron-tenant")
    assert {r.output for r in runs} == set(zones)
    for r in runs:
        p = ScheduledPayload.model_validate(r.payload)
        assert p.timezone == zones[str(p.external_id)]
        assert p.local_timestamp.hour == 9 and p.type == "IMPERATIVE"
        assert len(p.upcoming) == 5 and p.upcoming[0] - p.timestamp == dt.timedelta(days=1)


async def test_bad_input_names_the_field_and_writes_nothing(
    client: Client, worker: Worker
) -> None:
    for expression, field in [("0 25 * * *", "hour"), ("61 * * * *", "minute"),
                              ("* * 32 * *", "day-of-month"), ("* * * 13 *", "month"),
                              ("* * * * MOO", "day-of-week")]:
        with pytest.raises(cron.CronError) as info:
            client.create_schedule("cron-tenant", expression)
        assert info.value.cron_field == field and f"{field} field" in info.value.message
        assert info.value.field == "cron"
    with pytest.raises(ValidationError) as bad_zone:
        client.create_schedule("cron-tenant", "@daily", timezone="Mars/Olympus")
    assert bad_zone.value.field == "timezone"
    with pytest.raises(UnknownTask):
        client.create_schedule("cron-nope", "@daily")
    with pytest.raises(ValidationError) as bad_key:
        client.create_schedule("cron-tenant", "@daily", deduplication_key="")
    assert bad_key.value.field == "deduplication_key"
    with pytest.raises(ScheduleNotFound):
        client.retrieve_schedule("sched_missing")
    assert client.list_schedules(type="IMPERATIVE") == []  # only @task's own


async def test_update_activate_deactivate_delete(
    store: Store, clock: FakeClock, client: Client, worker: Worker
) -> None:
    clock.set(at("2026-06-01T08:00:00Z"))
    s = client.create_schedule("cron-tenant", "0 9 * * *")
    assert s.next_run_at == at("2026-06-01T09:00:00Z")
    s = client.update_schedule(s.id, cron="30 9 * * *", timezone="Europe/Paris")
    assert (s.cron, s.timezone, s.next_run_at) == ("30 9 * * *", "Europe/Paris",
                                                   at("2026-06-02T07:30:00Z"))
    s = client.update_schedule(s.id, external_id="org_9")
    assert s.external_id == "org_9" and s.next_run_at == at("2026-06-02T07:30:00Z")
    s = client.deactivate_schedule(s.id)
    assert not s.active and s.next_run_at is None
    clock.set(at("2026-06-05T12:00:00Z"))
    assert fire_due(store) == 0
    s = client.activate_schedule(s.id)  # from the next slot after now: no catching up
    assert s.active and s.next_run_at == at("2026-06-06T07:30:00Z")
    assert client.delete_schedule(s.id).id == s.id
    with pytest.raises(ScheduleNotFound):
        client.retrieve_schedule(s.id)


# -- declarative schedules ---------------------------------------------------------------------


async def start_worker(store: Store, *tasks: Any) -> None:
    w = Worker(store, tasks={t.id: t for t in tasks}, env="dev", life_lock=False,
               scheduler=False)
    await w.start(background=False)
    await w.shutdown()


def declarative(store: Store) -> Schedule:
    rows, _ = store.list_schedules("dev", task_id="cron-declared", type="DECLARATIVE")
    assert len(rows) == 1
    return rows[0]


async def test_declarative_schedules_follow_the_code_on_worker_start(
    store: Store, clock: FakeClock, client: Client
) -> None:
    clock.set(at("2026-06-01T06:00:00Z"))  # a Monday
    await start_worker(store, declared)
    s = declarative(store)
    assert (s.cron, s.timezone, s.active) == ("0 9 * * MON", "Europe/Paris", True)
    assert s.next_run_at == at("2026-06-01T07:00:00Z")
    await start_worker(store, declared)  # unchanged: the same schedule, the same next slot
    assert declarative(store) == s

    clock.set(at("2026-06-01T07:00:10Z"))
    assert fire_due(store) == 1
    run = scheduled_runs(store, "cron-declared")[0]
    assert run.payload["type"] == "DECLARATIVE" and run.payload["scheduleId"] == s.id

    changed = dataclasses.replace(declared, cron="0 18 * * FRI")
    await start_worker(store, changed)
    s2 = declarative(store)
    assert s2.id == s.id and s2.cron == "0 18 * * FRI"
    assert s2.next_run_at == at("2026-06-05T16:00:00Z")
    assert s2.last_run_at == s.next_run_at

    await start_worker(store, every_minute)  # does not serve cron-declared: untouched
    assert declarative(store).active

    await start_worker(store, dataclasses.replace(declared, cron=None))  # cron= removed
    gone = declarative(store)
    assert not gone.active and gone.next_run_at is None
    await start_worker(store, changed)  # and added back
    assert declarative(store).active

    # Paused by hand: stays paused across deploys; edits belong to the code.
    client.deactivate_schedule(s.id)
    await start_worker(store, changed)
    assert not declarative(store).active
    with pytest.raises(InvalidState):
        client.update_schedule(s.id, cron="@daily")
    with pytest.raises(InvalidState):
        client.delete_schedule(s.id)
    assert client.activate_schedule(s.id).active


async def test_a_bad_declared_cron_stops_the_worker_start(store: Store) -> None:
    broken = dataclasses.replace(declared, cron="0 9 * * MONDAY")
    with pytest.raises(cron.CronError) as info:
        await start_worker(store, broken)
    assert info.value.cron_field == "day-of-week" and "cron-declared" in info.value.message
    assert store.list_schedules("dev") == ([], 0)


# -- a scheduled run runs --------------------------------------------------------------------


async def test_a_scheduled_run_gets_a_typed_payload(
    store: Store, clock: FakeClock, client: Client, worker: Worker
) -> None:
    clock.set(at("2026-06-01T09:59:30Z"))
    s = client.create_schedule("cron-every-minute", "* * * * *", timezone="Asia/Kolkata",
                               external_id="org_7")
    clock.advance(45)
    fire_due(store)
    clock.advance(60)
    fire_due(store)
    await worker.run_until_idle()
    runs = scheduled_runs(store, "cron-every-minute")
    assert [r.status for r in runs] == [RunStatus.COMPLETED] * 2
    assert runs[1].output == {
        "slot": "2026-06-01T10:01:00+00:00",
        "local": "2026-06-01T15:31:00+05:30",
        "previous": "2026-06-01T10:00:00+00:00",
        "external_id": "org_7",
        "upcoming": 5,
    }
    assert runs[0].payload["scheduleId"] == s.id and runs[0].payload["lastTimestamp"] is None


# -- HTTP API and the HTTP client --------------------------------------------------------------


class SyncASGI(httpx.BaseTransport):
    """A synchronous transport into an ASGI app, through an event loop of its own (the
    sync Client over HTTP, without sockets)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def forward() -> httpx.Response:
            inner = httpx.Request(request.method, request.url, headers=request.headers,
                                  content=request.read())
            resp = await self.inner.handle_async_request(inner)
            body = await resp.aread()
            return httpx.Response(resp.status_code, headers=resp.headers, content=body)

        return asyncio.run_coroutine_threadsafe(forward(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@dataclasses.dataclass
class Http:
    app: Any
    keys: dict[str, str]

    def sync(self, env: str = "dev") -> httpx.Client:
        return httpx.Client(transport=SyncASGI(self.app), base_url="http://outlast.test",
                            headers={"Authorization": f"Bearer {self.keys[env]}"})

    def client(self, env: str = "dev") -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://outlast.test",
                                 headers={"Authorization": f"Bearer {self.keys[env]}"})


@pytest.fixture
def http(store: Store, worker: Worker) -> Http:
    keys = {env: create_key(store, env).secret for env in ("dev", "prod")}
    return Http(create_app(store, dashboard=False), keys)


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_http_api_in_the_trigger_dev_shape(
    store: Store, clock: FakeClock, http: Http
) -> None:
    async with http.client("dev") as api, http.client("prod") as other_env:
        await _api_calls(store, clock, api, other_env)


async def _api_calls(
    store: Store, clock: FakeClock, api: httpx.AsyncClient, other_env: httpx.AsyncClient
) -> None:
    clock.set(at("2026-06-01T06:00:00Z"))
    body = {"task": "cron-tenant", "cron": "0 9 * * MON", "timezone": "Europe/Paris",
            "externalId": "org_1", "deduplicationKey": "digest:org_1"}
    made = ok(await api.post("/api/v1/schedules", json=body))
    assert made == {
        **made,
        "task": "cron-tenant",
        "type": "IMPERATIVE",
        "active": True,
        "externalId": "org_1",
        "deduplicationKey": "digest:org_1",
        "generator": {"type": "CRON", "expression": "0 9 * * MON",
                      "description": "At 09:00, on Monday"},
        "timezone": "Europe/Paris",
        "nextRun": "2026-06-01T07:00:00.000Z",
    }
    assert made["environments"][0]["id"] == "dev"
    again = ok(await api.post("/api/v1/schedules", json={**body, "cron": "0 8 * * MON"}))
    assert again["id"] == made["id"] and again["generator"]["expression"] == "0 8 * * MON"

    bad = await api.post("/api/v1/schedules", json={**body, "cron": "0 9 * * MOONDAY"})
    assert bad.status_code == 422 and bad.json()["field"] == "cron"
    assert "day-of-week field" in bad.json()["error"]
    zone = await api.post("/api/v1/schedules", json={**body, "timezone": "Nowhere/Land"})
    assert zone.status_code == 422 and zone.json()["field"] == "timezone"
    unknown = await api.post("/api/v1/schedules", json={**body, "task": "cron-nope"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_task"

    sid = made["id"]
    listed = ok(await api.get("/api/v1/schedules", params={"perPage": 1}))
    assert listed["pagination"] == {"currentPage": 1, "totalPages": 2, "count": 2}
    page2 = ok(await api.get("/api/v1/schedules", params={"perPage": 1, "page": 2}))
    assert {listed["data"][0]["type"], page2["data"][0]["type"]} == {"IMPERATIVE",
                                                                      "DECLARATIVE"}
    only = ok(await api.get("/api/v1/schedules", params={"type": "IMPERATIVE"}))
    assert [d["id"] for d in only["data"]] == [sid]
    assert ok(await api.get(f"/api/v1/schedules/{sid}"))["externalId"] == "org_1"
    assert (await other_env.get(f"/api/v1/schedules/{sid}")).status_code == 404  # env-scoped
    updated = ok(await api.put(f"/api/v1/schedules/{sid}", json={"cron": "*/5 * * * *"}))
    assert updated["generator"]["description"] == "Every 5 minutes"
    assert updated["nextRun"] == "2026-06-01T06:05:00.000Z"
    off = ok(await api.post(f"/api/v1/schedules/{sid}/deactivate"))
    assert off["active"] is False and off["nextRun"] is None
    assert ok(await api.post(f"/api/v1/schedules/{sid}/activate"))["active"] is True
    assert ok(await api.delete(f"/api/v1/schedules/{sid}"))["id"] == sid
    gone = await api.get(f"/api/v1/schedules/{sid}")
    assert gone.status_code == 404 and gone.json()["code"] == "schedule_not_found"

    decl = declarative(store)
    edit = await api.put(f"/api/v1/schedules/{decl.id}", json={"cron": "@daily"})
    assert edit.status_code == 409 and edit.json()["code"] == "invalid_state"
    assert (await api.delete(f"/api/v1/schedules/{decl.id}")).status_code == 409
    zones = ok(await api.get("/api/v1/timezones"))["timezones"]
    assert zones[0] == "UTC" and "Europe/Paris" in zones
    assert "/api/v1/schedules" in ok(await api.get("/api/v1/openapi.json"))["paths"]


async def test_the_http_client_and_the_schedules_helper(
    store: Store, clock: FakeClock, http: Http
) -> None:
    over_http = Client(api_url="http://outlast.test", secret_key="unused")
    assert over_http._http is not None
    over_http._http._http.close()
    over_http._http._http = http.sync()  # the same calls, through the ASGI app
    set_default_client(over_http)
    try:
        clock.set(at("2026-06-01T06:00:00Z"))
        s = schedules.create(task=tenant_job, cron="0 9 * * *", timezone="Asia/Tokyo",
                             external_id="org_5", deduplication_key="t:org_5")
        assert s.next_run_at == at("2026-06-02T00:00:00Z") and s.env == "dev"
        assert schedules.retrieve(s.id) == s
        assert [x.id for x in schedules.list(external_id="org_5")] == [s.id]
        assert schedules.update(s.id, cron="0 10 * * *").cron == "0 10 * * *"
        assert not schedules.deactivate(s.id).active
        assert schedules.activate(s.id).active
        with pytest.raises(cron.CronError):
            cron.parse("0 10 * * * *")
        with pytest.raises(ValidationError) as info:
            schedules.create(task="cron-tenant", cron="0 99 * * *")
        assert info.value.field == "cron"
        async_client = AsyncClient(over_http)
        assert (await async_client.retrieve_schedule(s.id)).id == s.id
        assert schedules.delete(s.id).id == s.id
        with pytest.raises(ScheduleNotFound):
            schedules.retrieve(s.id)
    finally:
        set_default_client(None)
        over_http.close()
    times = schedules.next_runs("0 9 * * MON", "Europe/Paris", 3,
                                after=dt.datetime(2026, 3, 20, tzinfo=UTC))
    assert [t.isoformat() for t in times] == ["2026-03-23T09:00:00+01:00",
                                              "2026-03-30T09:00:00+02:00",
                                              "2026-04-06T09:00:00+02:00"]


# -- CLI ---------------------------------------------------------------------------------------


async def test_cli_schedules(
    db_url: str, store: Store, worker: Worker, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTLAST_DATABASE_URL", db_url)
    monkeypatch.setenv("OUTLAST_ENV", "dev")
    # The commands' own parsing and printing, over the test's store (no store per call).
    monkeypatch.setattr(
        _cli_schedules, "_client", lambda args: Client(store=store, env=args.env)
    )
    flags = ["--database-url", db_url, "--env", "dev"]

    def run(*argv: str) -> str:
        capsys.readouterr()
        assert cli_main(list(argv)) == 0
        return capsys.readouterr().out

    made = json.loads(run("schedules", "create", *flags, "--task", "cron-tenant", "--cron",
                          "0 9 * * MON", "--tz", "Europe/Paris", "--external-id", "org_1",
                          "--dedup-key", "cli:org_1", "--json"))
    sid = made["id"]
    again = json.loads(run("schedules", "create", *flags, "--task", "cron-tenant", "--cron",
                           "0 10 * * MON", "--dedup-key", "cli:org_1", "--json"))
    assert again["id"] == sid and again["timezone"] == "UTC"
    listing = run("schedules", "list", *flags)
    assert sid in listing and "0 10 * * MON" in listing and "cron-declared" in listing
    assert "org_1" in run("schedules", "show", *flags, sid)
    assert "*/30 * * * *" in run("schedules", "update", *flags, sid, "--cron", "*/30 * * * *")
    assert "active    no" in run("schedules", "disable", *flags, sid)
    assert "active    yes" in run("schedules", "enable", *flags, sid)
    assert f"deleted {sid}" in run("schedules", "delete", *flags, sid)
    capsys.readouterr()
    assert cli_main(["schedules", "create", *flags, "--task", "cron-tenant", "--cron",
                     "0 9 * 13 *"]) == 2
    assert "month field" in capsys.readouterr().err


# -- the example -------------------------------------------------------------------------------


async def test_weekly_digest_example_fires_the_fan_out(
    store: Store, clock: FakeClock, client: Client, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXAMPLES_DATA_DIR", str(tmp_path / "examples-data"))
    from examples import digest
    from examples import weekly_digest_schedule as example

    monkeypatch.setattr(example, "USERS_PER_DIGEST", 3)
    tasks = {t.id: t for t in (example.weekly_digest, example.tenant_digest,
                               digest.send_digest, digest.send_digest_email)}
    clock.set(at("2026-06-01T06:30:00Z"))  # Monday, 08:30 in Paris
    w = Worker(store, tasks=tasks, env="dev", life_lock=False, concurrency=20)
    set_default_client(client)
    try:
        tenant = example.schedule_tenant_digest("org_42", "America/New_York")
        assert example.schedule_tenant_digest("org_42", "America/New_York").id == tenant.id
        await w.start(background=False)
        for _ in range(12 * 8):  # until 14:30 UTC: 09:00 Paris and 09:00 New York
            clock.advance(300)
            await w.run_until_idle()
    finally:
        set_default_client(None)
        await w.shutdown()
    weekly = client.list_runs(task_id="cron-weekly-digest")
    assert [r.status for r in weekly] == [RunStatus.COMPLETED]
    assert weekly[0].output["week"] == "2026-W23" and weekly[0].output["sent"] == 3
    per_tenant = client.list_runs(task_id="cron-tenant-digest")
    assert [r.status for r in per_tenant] == [RunStatus.COMPLETED]
    assert per_tenant[0].payload["externalId"] == "org_42"
    assert per_tenant[0].payload["timestamp"] == "2026-06-01T13:00:00.000Z"
