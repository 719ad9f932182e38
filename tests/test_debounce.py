"""Debounce on both backends (issue 20, part 5): a burst of events or triggers for one key
becomes one run carrying the last one's data; the period is the quiet time after the last
before it starts, the timeout caps how long a burst may postpone it, a trigger after it
started begins a new burst. Exact under concurrent publishers and several worker
processes on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from outlast import CancelOn, Debounce, Worker, task
from outlast._clock import FakeClock
from outlast._errors import ConfigurationError, ValidationError
from outlast._http import AsyncHttpTransport
from outlast._trigger import TriggerOptions
from outlast.client import AsyncClient, Client
from outlast.explain import why
from outlast.runs import RunStatus
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import Store
from tests.conftest import spawn_worker


@task(id="db-sync", on=["account.*"],
      debounce=Debounce(key="data.account_id", period=timedelta(seconds=10)))
async def sync(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@task(id="db-capped", on=["capped.changed"],
      debounce=Debounce(key="event.data.account_id", period=10, timeout=30))
async def capped(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@task(id="db-direct")
async def direct(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@task(id="db-member", on=["member.changed"],
      debounce=Debounce(key="data.team", period=10),
      cancel_on=[CancelOn("member.removed", match="data.user")])
async def member(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


TASKS = {t.id: t for t in (sync, capped, direct, member)}


def _publish_definitions(store: Store) -> None:
    store.publish_tasks("dev", [t.definition() for t in TASKS.values()])


async def _drive(store: Store, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    store.tick()
    worker = Worker(store, tasks=TASKS, env="dev")
    await worker.run_until_idle()
    await worker.shutdown(grace=0)


async def test_fifty_events_for_one_key_make_one_run_with_the_last(
    store: Store, client: Client, clock: FakeClock
) -> None:
    _publish_definitions(store)
    published = []
    for n in range(50):
        published.append(client.publish("account.updated", {"account_id": 7, "n": n}))
        clock.advance(1)  # 1 s apart: each within the 10 s period of the one before
    run_ids = {i for p in published for i in p.run_ids}
    assert len(run_ids) == 1
    [run] = client.list_runs(task_id="db-sync")
    assert run.id in run_ids and run.status == RunStatus.DELAYED
    assert run.payload == {"account_id": 7, "n": 49}
    assert run.metadata["debounce"] == {"key": "7", "count": 50}
    assert run.delay_until == clock.now() - 1 + 10  # a period after the last event
    outcomes = {d["outcome"] for e in client.list_events(limit=60) for d in e["deliveries"]}
    assert outcomes == {"debounced"}
    assert {d["run_id"] for e in client.list_events(limit=60) for d in e["deliveries"]} == {
        run.id}

    await _drive(store, clock, 5)  # not quiet for 10 s yet
    assert client.retrieve(run.id).status == RunStatus.DELAYED
    await _drive(store, clock, 5)
    done = client.retrieve(run.id)
    assert done.status == RunStatus.COMPLETED and done.output == {"account_id": 7, "n": 49}


async def test_two_keys_make_two_runs(store: Store, client: Client, clock: FakeClock) -> None:
    _publish_definitions(store)
    for n in range(10):
        client.publish("account.updated", {"account_id": n % 2, "n": n})
    runs = {r.metadata["debounce"]["key"]: r for r in client.list_runs(task_id="db-sync")}
    assert set(runs) == {"0", "1"}
    assert runs["0"].payload["n"] == 8 and runs["1"].payload["n"] == 9
    assert runs["0"].metadata["debounce"]["count"] == 5


async def test_timeout_caps_the_delay_of_a_burst(
    store: Store, client: Client, clock: FakeClock
) -> None:
    _publish_definitions(store)
    start = clock.now()
    for n in range(6):  # t = 0, 5, ..., 25: each would push the start 10 s further
        client.publish("capped.changed", {"account_id": 1, "n": n})
        clock.advance(5)
    [run] = client.list_runs(task_id="db-capped")
    assert run.delay_until == start + 30  # the timeout, not 25 + 10
    # t = 30: the burst's run is due (no tick has promoted it yet): a new burst begins.
    client.publish("capped.changed", {"account_id": 1, "n": 6})
    second = [r for r in client.list_runs(task_id="db-capped") if r.id != run.id]
    assert len(second) == 1 and second[0].payload["n"] == 6
    await _drive(store, clock, 0)
    assert client.retrieve(run.id).output == {"account_id": 1, "n": 5}
    assert client.retrieve(second[0].id).status == RunStatus.DELAYED


async def test_a_burst_after_the_run_started_makes_a_second_run(
    store: Store, client: Client, clock: FakeClock
) -> None:
    _publish_definitions(store)
    first = client.publish("account.updated", {"account_id": 3, "n": 1}).run_ids[0]
    await _drive(store, clock, 11)
    assert client.retrieve(first).status == RunStatus.COMPLETED
    again = client.publish("account.updated", {"account_id": 3, "n": 2}).run_ids
    also = client.publish("account.updated", {"account_id": 3, "n": 3}).run_ids
    assert again == also and again[0] != first
    await _drive(store, clock, 11)
    assert client.retrieve(again[0]).output == {"account_id": 3, "n": 3}


async def test_direct_trigger_debounce_trailing_and_leading(
    store: Store, client: Client, clock: FakeClock
) -> None:
    trailing = TriggerOptions(debounce=Debounce("user-1", delay=5, max_delay=60))
    ids = [client.trigger(direct, {"n": n}, options=trailing).id for n in range(5)]
    assert len(set(ids)) == 1
    assert client.retrieve(ids[0]).payload == {"n": 4}

    leading = TriggerOptions(debounce=Debounce("user-2", delay=5, mode="leading"))
    lead = {client.trigger(direct, {"n": n}, options=leading).id for n in range(3)}
    assert len(lead) == 1
    [lead_id] = lead
    assert client.retrieve(lead_id).payload == {"n": 0}
    assert client.retrieve(lead_id).metadata["debounce"]["count"] == 3

    other = client.trigger(direct, {"n": 9}, options=TriggerOptions(
        debounce=Debounce("user-3", delay=5))).id
    assert other not in ids and other != lead_id
    await _drive(store, clock, 6)
    assert client.retrieve(ids[0]).output == {"n": 4}
    assert client.retrieve(lead_id).output == {"n": 0}


async def test_debounce_over_http_in_trigger_dev_shape(store: Store, clock: FakeClock) -> None:
    _publish_definitions(store)
    app = create_app(store, dashboard=False)
    secret = create_key(store, "dev").secret
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://outlast.test",
                                 headers={"Authorization": f"Bearer {secret}"}) as http:
        ids = set()
        for n in range(3):  # no mode: Trigger.dev's default, leading (the first payload)
            r = await http.post("/api/v1/tasks/db-direct/trigger", json={
                "payload": {"n": n}, "options": {"debounce": {"key": "k", "delay": "5s"}}})
            assert r.status_code == 200, r.text
            ids.add(r.json()["id"])
        assert len(ids) == 1
        bad = await http.post("/api/v1/tasks/db-direct/trigger", json={
            "payload": {}, "options": {"debounce": {"key": "k", "delay": "0s"}}})
        assert bad.status_code == 422 and "options.debounce.delay" in bad.text
    [run_id] = ids
    run = Client(store=store, env="dev").retrieve(run_id)
    assert run.payload == {"n": 0} and run.delay_until == clock.now() + 5


def test_bad_debounce_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as period:
        Debounce("k", period=0)
    assert period.value.field == "debounce.period"
    with pytest.raises(ValidationError) as timeout:
        Debounce("k", period=1, timeout=timedelta(days=30))
    assert timeout.value.field == "debounce.timeout"
    with pytest.raises(ValidationError) as mode:
        Debounce("k", period=1, mode="sideways")
    assert mode.value.field == "debounce.mode"
    with pytest.raises(ConfigurationError) as key:
        task(id="db-bad-key", on=["x"], debounce=Debounce("data.a +", period=1))(sync.fn)
    assert key.value.details["field"] == "debounce.key"
    with pytest.raises(ConfigurationError, match="on="):
        task(id="db-no-on", debounce=Debounce("data.a", period=1))(sync.fn)


# -- concurrency on PostgreSQL ------------------------------------------------------------


def _race(url: str, clock: Any, work: list[list[tuple[str, dict[str, Any]]]]) -> None:
    """Publish from one thread per list, each over its own store (its own connection),
    all released at once."""
    gate = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def publisher(items: list[tuple[str, dict[str, Any]]]) -> None:
        store = open_store(url, clock)
        try:
            client = Client(store=store, env="dev")
            gate.wait()
            for name, data in items:
                client.publish(name, data)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=publisher, args=(items,)) for items in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("backend", ["postgres"])
def test_concurrent_publishes_for_one_key_end_in_one_run(
    db_url: str, store: Store, client: Client, clock: FakeClock
) -> None:
    _publish_definitions(store)
    # A name per thread: publishes of one name queue behind its lock (ev_lock_name), so
    # these meet only at the group's row.
    work = [[(f"account.t{t}", {"account_id": n % 3, "n": t * 100 + n}) for n in range(30)]
            for t in range(6)]
    _race(db_url, clock, work)
    runs = client.list_runs(task_id="db-sync")
    assert sorted(r.metadata["debounce"]["key"] for r in runs) == ["0", "1", "2"]
    assert sum(r.metadata["debounce"]["count"] for r in runs) == 180
    deliveries = [d for e in client.list_events(limit=500) for d in e["deliveries"]]
    assert len(deliveries) == 180 and {d["run_id"] for d in deliveries} == {r.id for r in runs}


@pytest.mark.parametrize("backend", ["postgres"])
def test_concurrent_direct_triggers_for_one_key_end_in_one_run(
    db_url: str, store: Store, client: Client, clock: FakeClock
) -> None:
    gate = threading.Barrier(6)
    ids: list[str] = []
    errors: list[BaseException] = []

    def triggerer(t: int) -> None:
        own = open_store(db_url, clock)
        try:
            c = Client(store=own, env="dev")
            gate.wait()
            for n in range(20):
                options = TriggerOptions(debounce=Debounce(f"user-{n % 2}", delay=30))
                ids.append(c.trigger(direct, {"n": t * 100 + n}, options=options).id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=triggerer, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    runs = client.list_runs(task_id="db-direct")
    assert len(runs) == 2 and set(ids) == {r.id for r in runs}
    assert sorted(r.metadata["debounce"]["count"] for r in runs) == [60, 60]


@pytest.mark.parametrize("backend", ["postgres"])
def test_three_worker_processes_one_run_per_key(db_url: str) -> None:
    """Real processes and the real clock: three workers serve a debounced and a batched
    task while six threads publish bursts for three keys; each key ends in exactly one
    completed run with every event of its burst counted once, and every batched event is
    in exactly one completed batch."""
    workers = [spawn_worker(db_url, "tests.apps.debounce_app") for _ in range(3)]
    store = open_store(db_url)
    try:
        client = Client(store=store, env="dev")
        deadline = time.monotonic() + 60
        while store.get_task("dev", "mp-batch") is None:
            assert time.monotonic() < deadline, "the workers never published their tasks"
            time.sleep(0.2)
        work = [[(f"mp.changed.t{t}", {"account": f"a{n % 3}", "n": t * 100 + n})
                 for n in range(20)] + [(f"mp.item.t{t}", {"n": t * 100 + n}) for n in range(19)]
                for t in range(6)]
        _race(db_url, store.clock, work)
        while True:
            runs = client.list_runs(task_id="mp-debounce")
            batches = client.list_runs(task_id="mp-batch")
            if all(r.status == RunStatus.COMPLETED for r in runs + batches) and sum(
                len(r.payload) for r in batches
            ) == 6 * 19:
                break
            assert time.monotonic() < deadline + 60, [r.status for r in runs + batches]
            time.sleep(0.3)
        assert sorted(r.payload["account"] for r in runs) == ["a0", "a1", "a2"]
        assert sum(r.metadata["debounce"]["count"] for r in runs) == 120
        assert all(r.output == r.payload for r in runs)
        assert sorted(i["n"] for r in batches for i in r.payload) == sorted(
            t * 100 + n for t in range(6) for n in range(19))
        assert sum(r.output for r in batches) == 6 * 19
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        store.close()


async def test_the_run_page_shows_what_a_run_absorbed(store: Store, client: Client) -> None:
    from tests.test_dashboard import _app, _client

    _publish_definitions(store)
    for n in range(4):
        run_id = client.publish("account.updated", {"account_id": 5, "n": n}).run_ids[0]
    dash = await _client(_app(store, require_login=False))
    try:
        await dash.get("/runs")
        page = (await dash.get(f"/runs/{run_id}")).text
    finally:
        await dash.http.aclose()
    assert 'id="run-absorbed">4 triggers or events (debounced, key <code>5</code>)' in page


async def test_the_http_client_sends_debounce_with_its_mode(
    store: Store, clock: FakeClock
) -> None:
    _publish_definitions(store)
    secret = create_key(store, "dev").secret
    jobs = AsyncClient(api_url="http://outlast.test", secret_key=secret, env="dev")
    transport = jobs._transport
    assert isinstance(transport, AsyncHttpTransport)
    transport._sessions[asyncio.get_running_loop()] = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(store, dashboard=False)),
        base_url="http://outlast.test", headers={"Authorization": f"Bearer {secret}"},
    )
    try:
        debounce = Debounce("over-http", delay=5, max_delay=8)  # trailing: not the default
        handles = [await jobs.trigger("db-direct", {"n": n}, debounce=debounce)
                   for n in range(3)]
    finally:
        await jobs.close()
    assert len({h.id for h in handles}) == 1
    run = Client(store=store, env="dev").retrieve(handles[0].id)
    assert run.payload == {"n": 2} and run.metadata["debounce"]["count"] == 3


async def test_a_replayed_event_joins_the_pending_run(store: Store, client: Client) -> None:
    _publish_definitions(store)
    first = client.publish("account.updated", {"account_id": 9, "n": 1}, id="evt-a")
    [pending] = first.run_ids
    [delivery] = client.replay_event("evt-a", task="db-sync")
    assert delivery["run_id"] == pending and delivery["outcome"] == "debounced"
    logged = store.get_event("dev", "evt-a")
    assert logged is not None and {d.run_id for d in logged.deliveries} == {pending}
    [run] = client.list_runs(task_id="db-sync")
    assert run.metadata["debounce"]["count"] == 2


async def test_why_a_debounced_run_has_not_started(store: Store, client: Client) -> None:
    _publish_definitions(store)
    for n in range(3):
        run_id = client.publish("account.updated", {"account_id": 4, "n": n}).run_ids[0]
    text = why(store, client.retrieve(run_id))
    assert text.startswith("debounced for key '4': 3 trigger(s) so far; it starts at ")


def test_the_cli_triggers_with_debounce(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from outlast.cli import main

    base = ["trigger", "db-direct", "--database-url", db_url, "--json",
            "--debounce", "cli-key", "--debounce-delay", "60"]
    assert main([*base, "--payload", '{"n": 1}']) == 0
    assert main([*base, "--payload", '{"n": 2}']) == 0
    ids = set(re.findall(r'"id": "(run_\w+)"', capsys.readouterr().out))
    assert len(ids) == 1
    store = open_store(db_url)
    try:
        run = Client(store=store, env="dev").retrieve(ids.pop())
    finally:
        store.close()
    assert run.payload == {"n": 2} and run.status == RunStatus.DELAYED


async def test_cancel_on_matches_the_payload_a_debounced_run_took_last(
    store: Store, client: Client
) -> None:
    # cancel_on finds runs by the keys of their payload (run_cancel_keys): the pending
    # run's keys follow each trigger's payload it takes, not the first one's.
    _publish_definitions(store)
    client.publish("member.changed", {"team": "t", "user": "u1"})
    client.publish("member.changed", {"team": "t", "user": "u2"})
    [run] = client.list_runs(task_id="db-member")
    assert run.payload["user"] == "u2"
    client.publish("member.removed", {"user": "u1"})
    assert client.retrieve(run.id).status == RunStatus.DELAYED
    client.publish("member.removed", {"user": "u2"})
    assert client.retrieve(run.id).status == RunStatus.CANCELED
