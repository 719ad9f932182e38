"""Events on both backends: publish, subscribe (filters, typed payloads), wait for an
event, cancel on an event, replays.

A publish is one transaction: the event, one run per matching subscriber, a delivery row
per subscriber (why one did not match), cancels and resumed waits. The event id
deduplicates: a retried publish never runs anyone twice.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from outlast import CancelOn, HookEvent, Worker, explain, task, wait
from outlast._clock import FakeClock
from outlast._errors import ConfigurationError, EventNotFound
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from tests.apps import events_app
from tests.conftest import ROOT

HOOKS: list[tuple[str, str, str | None]] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    HOOKS.clear()


def record(event: HookEvent) -> None:
    HOOKS.append((event.name, event.run_id, str(event.status) if event.status else None))


@task(id="ev-welcome", on=["user.signup"])
async def welcome(payload: dict[str, Any]) -> str:
    return f"welcome {payload['user_id']}"


@task(id="ev-audit", on="user.*")
async def audit(payload: dict[str, Any]) -> str:
    return "audited"


@task(id="ev-pro-only", on=["user.signup"], if_="event.data.plan == 'pro'")
async def pro_only(payload: dict[str, Any]) -> str:
    return "pro"


class Signup(BaseModel):
    user_id: int
    email: str


@task(id="ev-typed", on=["typed.signup"])
async def typed(payload: Signup) -> str:
    return payload.email


@task(id="ev-invoice-wait")
async def invoice_wait(payload: dict[str, Any]) -> dict[str, Any]:
    got = await wait.for_event(
        "invoice.paid", match="data.invoice_id", value=payload["inv"],
        timeout=timedelta(days=7), since=payload.get("since"),
    )
    return {"ok": got.ok, "timed_out": got.timed_out, "event": got.output}


@task(id="ev-cancellable", on_end=record, on_complete=record,
      cancel_on=[CancelOn("user.deleted", match="data.user_id")])
async def cancellable(payload: dict[str, Any]) -> str:
    if payload.get("wait"):
        await wait.for_event("never.happens", timeout=timedelta(days=1))
    else:
        await asyncio.sleep(30)
    return "finished"


@task(id="ev-retained", on=["order.placed"], replay="retained")
async def retained(payload: dict[str, Any]) -> int:
    return int(payload["n"])


@task(id="ev-new-only", on=["order.placed"])
async def new_only(payload: dict[str, Any]) -> int:
    return int(payload["n"])


SUBSCRIBERS = (welcome, audit, pro_only)


def _publish_definitions(store: Store, *tasks: Any) -> None:
    store.publish_tasks("dev", [t.definition() for t in tasks])


def _runs_of(client: Client, task_id: str) -> list[Any]:
    return client.list_runs(task_id=task_id)


async def test_one_publish_three_subscribers_one_filtered_makes_two_runs(
    store: Store, client: Client
) -> None:
    _publish_definitions(store, *SUBSCRIBERS)
    result = client.publish("user.signup", {"user_id": 7, "plan": "free"}, id="evt_1")
    assert not result.duplicate
    assert len(result.run_ids) == 2
    runs = {r.task_id: r for r in (client.retrieve(i) for i in result.run_ids)}
    assert set(runs) == {"ev-welcome", "ev-audit"}
    assert runs["ev-welcome"].payload == {"user_id": 7, "plan": "free"}
    assert runs["ev-welcome"].metadata["event"] == {"id": "evt_1", "name": "user.signup"}

    [logged] = client.list_events()
    outcomes = {d["task_id"]: d for d in logged["deliveries"]}
    assert outcomes["ev-pro-only"]["outcome"] == "filtered"
    assert "plan == 'pro'" in outcomes["ev-pro-only"]["reason"]
    assert {outcomes[t]["run_id"] for t in ("ev-welcome", "ev-audit")} == set(result.run_ids)

    again = client.publish("user.signup", {"user_id": 7, "plan": "free"}, id="evt_1")
    assert again.duplicate
    assert sorted(again.run_ids) == sorted(result.run_ids)
    assert len(client.list_runs()) == 2
    assert len(client.list_events()) == 1

    worker = Worker(store, tasks={t.id: t for t in SUBSCRIBERS}, env="dev")
    await worker.run_until_idle()
    await worker.shutdown()
    assert client.retrieve(runs["ev-welcome"].id).output == "welcome 7"


def test_the_fan_out_is_in_the_events_transaction(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish_definitions(store, *SUBSCRIBERS)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database went away mid-publish")

    # Every way runs go in (SQLite inserts a fan-out's runs with no tags or keys apart).
    for method in ("_insert_runs", "_insert_lean"):
        if hasattr(store, method):
            monkeypatch.setattr(store, method, broken)
    with pytest.raises(RuntimeError):
        client.publish("user.signup", {"user_id": 1}, id="evt_atomic")
    monkeypatch.undo()
    assert client.list_events() == []  # neither the event
    assert client.list_runs() == []  # nor any run
    result = client.publish("user.signup", {"user_id": 1}, id="evt_atomic")
    assert not result.duplicate and len(result.run_ids) == 2  # the retry goes through


def test_a_batch_publish_and_a_dedup_window(
    store: Store, client: Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish_definitions(store, welcome)
    monkeypatch.setenv("OUTLAST_EVENT_DEDUP_SECONDS", "60")
    results = client.publish_many([
        {"name": "user.signup", "data": {"user_id": i}, "id": f"b{i}"} for i in range(5)
    ])
    assert [len(r.run_ids) for r in results] == [1] * 5
    assert client.publish("user.signup", {"user_id": 0}, id="b0").duplicate
    clock.advance(61)  # past the window: the same id is a new event
    assert not client.publish("user.signup", {"user_id": 0}, id="b0").duplicate
    assert len(client.list_runs(task_id="ev-welcome")) == 6


def test_a_batch_mixing_plain_and_filtered_subscribers_fans_each_event_out_alike(
    store: Store, client: Client
) -> None:
    """A batch plans the names every subscriber takes as they are (user.login: ev-audit
    only) apart from those with a filter (user.signup: ev-pro-only): each event gets what
    it would get published alone, and the log says so."""
    _publish_definitions(store, *SUBSCRIBERS)
    results = client.publish_many([
        {"name": "user.login", "data": {"user_id": 1}, "id": "m1"},
        {"name": "user.signup", "data": {"user_id": 2, "plan": "pro"}, "id": "m2"},
        {"name": "user.login", "data": {"user_id": 3}, "id": "m3"},
        {"name": "user.signup", "data": {"user_id": 4, "plan": "free"}, "id": "m4"},
        {"name": "nobody.listens", "data": 5, "id": "m5"},
    ])
    tasks = [sorted(client.retrieve(i).task_id for i in r.run_ids) for r in results]
    assert tasks == [["ev-audit"], ["ev-audit", "ev-pro-only", "ev-welcome"], ["ev-audit"],
                     ["ev-audit", "ev-welcome"], []]
    assert client.retrieve(results[2].run_ids[0]).payload == {"user_id": 3}
    logged = {e["id"]: e for e in client.list_events()}
    outcomes = {d["task_id"]: d["outcome"] for d in logged["m4"]["deliveries"]}
    assert outcomes == {"ev-audit": "run", "ev-welcome": "run", "ev-pro-only": "filtered"}
    assert logged["m5"]["deliveries"] == []


async def test_data_that_does_not_fit_the_payload_type_fails_that_run_clearly(
    store: Store, client: Client
) -> None:
    _publish_definitions(store, typed)
    result = client.publish("typed.signup", {"user_id": 3})  # no email
    [run_id] = result.run_ids  # the event is not lost: the run exists
    [logged] = client.list_events()
    assert "email" in (logged["deliveries"][0]["reason"] or "")
    worker = Worker(store, tasks={typed.id: typed}, env="dev")
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(run_id)
    assert run.status == RunStatus.FAILED
    assert run.attempt == 1  # not retried
    assert "email" in str(run.error)


def test_bad_filters_fail_at_definition_naming_the_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        task(id="ev-bad-filter", on=["x"], if_="event.data.plan ==")(welcome.fn)
    assert info.value.details["field"] == "if_"
    with pytest.raises(ConfigurationError):
        CancelOn("user.deleted", match="user_id")  # not a path into data
    with pytest.raises(ConfigurationError):
        task(id="ev-bad-replay", on=["x"], replay="all")(welcome.fn)


async def test_wait_for_event_parks_and_resumes_with_the_matching_event(
    store: Store, client: Client
) -> None:
    first = await invoice_wait.trigger({"inv": "inv_1"})
    second = await invoice_wait.trigger({"inv": "inv_1"})
    other = await invoice_wait.trigger({"inv": "inv_2"})
    worker = Worker(store, tasks={invoice_wait.id: invoice_wait}, env="dev")
    await worker.run_until_idle()
    assert worker.active == {}
    assert {client.retrieve(h.id).status for h in (first, second, other)} == {
        RunStatus.WAITING}
    assert "waiting on event invoice.paid (waitpoint" in explain.why(
        store, client.retrieve(first.id))

    client.publish("invoice.paid", {"invoice_id": "inv_9"})  # no one waits for this one
    client.publish("invoice.paid", {"invoice_id": "inv_1", "amount": 5}, id="pay_1")
    await worker.run_until_idle()
    for h in (first, second):  # two waiters for the same match both resume
        run = client.retrieve(h.id)
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.output["event"]["id"] == "pay_1"
        assert run.output["event"]["data"]["amount"] == 5
    assert client.retrieve(other.id).status == RunStatus.WAITING

    client.publish("invoice.paid", {"invoice_id": "inv_1"}, id="pay_again")
    await worker.run_until_idle()
    await worker.shutdown()
    assert client.retrieve(first.id).output["event"]["id"] == "pay_1"  # resumed once


async def test_wait_for_event_times_out(store: Store, client: Client, clock: FakeClock) -> None:
    handle = await invoice_wait.trigger({"inv": "inv_late"})
    worker = Worker(store, tasks={invoice_wait.id: invoice_wait}, env="dev")
    await worker.run_until_idle()
    clock.advance(7 * 24 * 3600 + 1)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"ok": False, "timed_out": True, "event": None}


async def test_an_event_just_before_the_wait_counts_only_with_since(
    store: Store, client: Client, clock: FakeClock
) -> None:
    client.publish("invoice.paid", {"invoice_id": "inv_early"}, id="early")
    clock.advance(30)
    without = await invoice_wait.trigger({"inv": "inv_early"})
    looking_back = await invoice_wait.trigger({"inv": "inv_early", "since": 60})
    worker = Worker(store, tasks={invoice_wait.id: invoice_wait}, env="dev")
    await worker.run_until_idle()
    await worker.shutdown()
    assert client.retrieve(without.id).status == RunStatus.WAITING
    run = client.retrieve(looking_back.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["event"]["id"] == "early"


async def test_cancel_on_cancels_a_waiting_and_an_executing_run_and_hooks_fire(
    store: Store, client: Client
) -> None:
    waiting = await cancellable.trigger({"user_id": 1, "wait": True})
    spared = await cancellable.trigger({"user_id": 2, "wait": True})
    executing = await cancellable.trigger({"user_id": 1}, max_duration=60)
    worker = Worker(store, tasks={cancellable.id: cancellable}, env="dev",
                    heartbeat_interval=0.02)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 60  # by the clock, not a count of polls: CI is loaded
        while time.monotonic() < deadline:
            if client.retrieve(executing.id).status == RunStatus.EXECUTING and (
                    client.retrieve(waiting.id).status == RunStatus.WAITING):
                break
            await asyncio.sleep(0.01)
        client.publish("user.deleted", {"user_id": 1})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {client.retrieve(h.id).status for h in (waiting, executing)}
            ended = [h for h in HOOKS if h[0] == "end"]
            if states == {RunStatus.CANCELED} and len(ended) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
    assert client.retrieve(waiting.id).status == RunStatus.CANCELED
    assert client.retrieve(executing.id).status == RunStatus.CANCELED
    assert client.retrieve(spared.id).status == RunStatus.WAITING
    for h in (waiting, executing):
        assert ("end", h.id, "CANCELED") in HOOKS
        assert ("complete", h.id, "CANCELED") in HOOKS


async def test_a_retained_subscriber_receives_the_history_once(
    store: Store, client: Client
) -> None:
    for n in range(3):
        client.publish("order.placed", {"n": n}, id=f"order_{n}")
    assert client.list_runs() == []  # nobody subscribed yet
    for _ in range(2):  # a second worker start (or a restart) delivers nothing again
        worker = Worker(store, tasks={t.id: t for t in (retained, new_only)}, env="dev")
        await worker.run_until_idle()
        await worker.shutdown()
    runs = _runs_of(client, "ev-retained")
    assert sorted(r.output for r in runs) == [0, 1, 2]
    assert _runs_of(client, "ev-new-only") == []  # new events only, by default

    result = client.publish("order.placed", {"n": 3}, id="order_3")
    assert len(result.run_ids) == 2  # both get new events


def test_replay_delivers_an_event_again_on_purpose(store: Store, client: Client) -> None:
    _publish_definitions(store, *SUBSCRIBERS)
    first = client.publish("user.signup", {"user_id": 5}, id="evt_r")
    again = client.replay_event("evt_r", task="ev-welcome")
    assert [d["outcome"] for d in again] == ["run"]
    assert again[0]["run_id"] not in first.run_ids
    assert len(client.list_runs(task_id="ev-welcome")) == 2
    everyone = client.replay_event("evt_r")
    assert sorted(d["outcome"] for d in everyone) == ["filtered", "run", "run"]


def test_a_server_killed_between_commit_and_answer_loses_and_duplicates_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """SIGKILL of a real `outlast server` after the publish committed and before it
    answered: the client saw no answer; its retry (same event ids) on a fresh server is
    answered as duplicates with the first runs, and each subscriber has one run per event."""
    from tests.test_server_e2e import Fleet, free_port, wait_for

    fleet = Fleet(db_url, tmp_path)
    try:
        fleet.cli("migrate")
        key = fleet.key()
        store = open_store(db_url)
        store.publish_tasks("dev", [t.definition() for t in events_app.TASKS.values()])
        marker = tmp_path / "published"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stalling = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.events_app", "server", "--database-url", db_url,
             "--host", "127.0.0.1", "--port", str(port), "--no-scheduler"],
            cwd=ROOT, env={**fleet.env, "OUTLAST_TEST_PUBLISHED": str(marker)},
        )
        fleet.procs.append(stalling)

        def answers(base: str) -> bool:
            try:
                return httpx.get(f"{base}/api/v1/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("the stalling server", lambda: answers(url))
        body = {"events": [{"name": "crash.signup", "data": {"n": i}, "id": f"crash_{i}"}
                           for i in range(50)]}
        headers = {"Authorization": f"Bearer {key}"}
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                outcome["answer"] = httpx.post(f"{url}/api/v1/events", json=body,
                                               headers=headers, timeout=60)
            except httpx.TransportError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        wait_for("the publish to commit", marker.exists)
        stalling.send_signal(signal.SIGKILL)
        stalling.wait()
        sender.join()
        assert "error" in outcome and "answer" not in outcome  # killed before answering
        first = {e.id: e for e in store.list_events("dev", limit=1000)}
        assert len(first) == 50  # committed: nothing lost

        url2 = fleet.server()()
        retry = httpx.post(f"{url2}/api/v1/events", json=body, headers=headers, timeout=60)
        assert retry.status_code == 200, retry.text
        answered = retry.json()["events"]
        assert all(e["duplicate"] for e in answered)
        for e in answered:
            made = {d.run_id for d in first[e["id"]].deliveries if d.run_id}
            assert set(e["run_ids"]) == made and len(made) == 2
        runs = Client(store=store, env="dev").list_runs(limit=1000)
        assert Counter(r.task_id for r in runs) == {"ev-crash-a": 50, "ev-crash-b": 50}

        # The HTTP client: publish (its generated id makes its own retries safe), read
        # the log, replay; an unknown event is EventNotFound, as over the database.
        app = Client(api_url=url2, secret_key=key, env="dev")
        one = app.publish("crash.signup", {"n": 1})
        assert not one.duplicate and len(one.run_ids) == 2
        [logged] = app.list_events(name="crash.signup", limit=1)
        assert logged["id"] == one.id
        assert {d["outcome"] for d in logged["deliveries"]} == {"run", "filtered"}
        assert len(app.replay_event(one.id, task="ev-crash-b")) == 1
        with pytest.raises(EventNotFound):
            app.replay_event("evt_nope")

        async def publish_async() -> Any:  # the async client's own HTTP session
            from outlast.client import AsyncClient

            aclient = AsyncClient(app)
            try:
                return await aclient.publish("crash.signup", {"n": 2}, id="async-1")
            finally:
                await aclient.close()

        assert len(asyncio.run(publish_async()).run_ids) == 2
        store.close()
    finally:
        fleet.stop()


def test_wait_for_event_survives_a_worker_kill_and_restart(db_url: str) -> None:
    """The run parks in a worker process; the worker is SIGKILLed; the event arrives with
    no worker alive; a new worker resumes the run with it."""
    from tests.conftest import spawn_worker
    from tests.test_server_e2e import wait_for

    store = open_store(db_url)  # the real clock: the workers' processes use it too
    client = Client(store=store, env="dev")
    store.publish_tasks("dev", [events_app.crash_waiter.definition()])
    run_id = client.trigger(events_app.crash_waiter, {"inv": "inv_k"}).id
    first = spawn_worker(db_url, "tests.apps.events_app", concurrency=2)
    try:
        wait_for("the run to park",
                 lambda: client.retrieve(run_id).status == RunStatus.WAITING)
        first.send_signal(signal.SIGKILL)
        first.wait()
        client.publish("crash.paid", {"invoice_id": "inv_other"})
        client.publish("crash.paid", {"invoice_id": "inv_k", "amount": 9}, id="paid_k")
        second = spawn_worker(db_url, "tests.apps.events_app", concurrency=2)
        try:
            wait_for("the run to finish", lambda: client.retrieve(run_id).is_final)
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    run = client.retrieve(run_id)
    store.close()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["event"]["id"] == "paid_k"
    assert run.output["event"]["data"]["amount"] == 9


async def test_the_dashboard_events_page_shows_runs_created_and_why_not(
    store: Store, client: Client
) -> None:
    import html

    from tests.test_dashboard import _app, _client

    _publish_definitions(store, *SUBSCRIBERS)
    result = client.publish("user.signup", {"user_id": 7, "plan": "free"}, id="evt_dash")
    client.publish("order.placed", {"n": 1}, id="evt_other")
    dash = await _client(_app(store, require_login=False))
    try:
        r = await dash.get("/events")
        page = html.unescape(r.text)
        assert r.status_code == 200
        assert "evt_dash" in page and "evt_other" in page
        for run_id in result.run_ids:
            assert f'/runs/{run_id}"' in page
        assert "ev-pro-only" in page and "if_ is false: event.data.plan == 'pro'" in page
        page = html.unescape((await dash.get("/events?name=order.placed")).text)
        assert "evt_other" in page and "evt_dash" not in page
    finally:
        await dash.http.aclose()


def test_events_leave_the_log_after_their_retention(
    store: Store, client: Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish_definitions(store, welcome)
    monkeypatch.setenv("OUTLAST_EVENT_DEDUP_SECONDS", "10")
    monkeypatch.setenv("OUTLAST_EVENT_RETENTION_SECONDS", "100")
    client.publish("user.signup", {"user_id": 1}, id="old")
    clock.advance(50)
    client.publish("user.signup", {"user_id": 2}, id="young")
    clock.advance(51)
    assert store.prune_events() == 1
    assert [e["id"] for e in client.list_events()] == ["young"]
    with pytest.raises(EventNotFound):
        client.replay_event("old")


async def test_the_async_client_and_the_module_level_publish(
    store: Store, client: Client
) -> None:
    import outlast
    from outlast.client import AsyncClient

    _publish_definitions(store, welcome)
    first = await AsyncClient(client).publish("user.signup", {"user_id": 1}, id="a1")
    assert len(first.run_ids) == 1
    again = outlast.publish("user.signup", {"user_id": 1}, id="a1")  # the default client
    assert again.duplicate and again.run_ids == first.run_ids
    [logged] = await AsyncClient(client).list_events(name="user.signup")
    assert logged["deliveries"][0]["run_id"] == first.run_ids[0]
