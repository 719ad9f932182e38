"""Alerts, on SQLite and PostgreSQL: a failed run's alert reaches a local receiver that
verifies its Standard Webhooks signature with the ``standardwebhooks`` package; a receiver
answering 500 three times gets it once more after each backoff (fake clock); a sender
SIGKILLed mid-post loses nothing; a storm of failures sends a few posts and one summary;
backlog and no-worker conditions fire once each time they begin; other features raise
their own kinds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from outlast import Retry, Worker, queue, task
from outlast._alerts import BACKOFF, Sender, create_rule, register_event
from outlast._clock import FakeClock
from outlast._errors import ValidationError
from outlast.client import Client
from outlast.store import open_store
from outlast.store.base import Store
from tests.alert_receiver import Receiver
from tests.conftest import ROOT, spawn_worker

# Rules seal their signing secrets: every test here has a key (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("encryption_key")


@task(id="alert-fails", retry=Retry(max_attempts=1))
async def fails(payload: dict[str, Any]) -> None:
    raise RuntimeError(f"upstream answered 503 for order {payload['n']}")


@task(id="alert-unserved", queue=queue("alert-slow"))
async def unserved(payload: dict[str, Any]) -> None:
    return None


async def _fail(client: Client, workers: Callable[..., Worker], n: int) -> list[str]:
    ids = [client.trigger(fails, {"n": i}).id for i in range(n)]
    await workers(fails, scheduler=False).run_until_idle()  # the test scans and sends
    return ids


async def test_a_failed_run_sends_one_signed_alert(
    client: Client, store: Store, now_clock: FakeClock, receiver: Receiver,
    workers: Callable[..., Worker],
) -> None:
    rule, secret = create_rule(store, now_clock, "dev", event="run.failed",
                               webhook_url=receiver.url, task_id="alert-fails")
    assert secret.startswith("whsec_")
    assert "secret" not in vars(store.list_alert_rules("dev")[0])  # shown once, never again
    [run_id] = await _fail(client, workers, 1)
    assert store.scan_failures().alerts == 1
    sent = Sender(store, now_clock).send_due()
    assert sent == 1, store.list_alert_deliveries("dev")
    [got] = receiver.received
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "run.failed"
    assert event["data"]["run_id"] == run_id
    assert event["data"]["error"]["type"] == "RuntimeError"
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(got.body.replace(b"503", b"504"), got.headers)
    [delivery] = store.list_alert_deliveries("dev", rule.id)
    assert delivery.status == "delivered"
    assert [a.status_code for a in delivery.attempt_log] == [200]
    assert Sender(store, now_clock).send_due() == 0  # sent once
    assert store.scan_failures().alerts == 0


async def test_slack_format_and_filters(
    client: Client, store: Store, now_clock: FakeClock, receiver: Receiver,
    workers: Callable[..., Worker],
) -> None:
    create_rule(store, now_clock, "dev", event="run.failed", webhook_url=receiver.url,
                format="slack")
    create_rule(store, now_clock, "dev", event="run.failed", webhook_url=receiver.url,
                task_id="another-task")
    create_rule(store, now_clock, "dev", event="run.failed", webhook_url=receiver.url,
                queue="another-queue")
    await _fail(client, workers, 1)
    assert store.scan_failures().alerts == 1
    Sender(store, now_clock).send_due()
    [got] = receiver.received
    assert b'"text":"[outlast dev] run.failed: run run_' in got.body


async def test_a_receiver_failing_three_times_gets_it_after_backoff(
    client: Client, store: Store, now_clock: FakeClock, receiver: Receiver,
    workers: Callable[..., Worker],
) -> None:
    rule, secret = create_rule(store, now_clock, "dev", event="run.failed",
                               webhook_url=receiver.url)
    await _fail(client, workers, 1)
    store.scan_failures()
    receiver.answers = [500, 500, 500]
    sender = Sender(store, now_clock)
    assert sender.send_due() == 0  # attempt 1: 500
    for delay in BACKOFF[:3]:
        now_clock.advance(delay - 1)
        sent = len(receiver.received)
        assert sender.send_due() == 0 and len(receiver.received) == sent  # not yet due
        now_clock.advance(1)
        sender.send_due()
    assert [r.status for r in receiver.received] == [500, 500, 500, 200]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1  # one message
    assert len({r.body for r in receiver.received}) == 1
    Webhook(secret).verify(receiver.received[-1].body, receiver.received[-1].headers)
    [delivery] = store.list_alert_deliveries("dev", rule.id)
    assert delivery.status == "delivered"
    assert [a.status_code for a in delivery.attempt_log] == [500, 500, 500, 200]
    assert [a.error for a in delivery.attempt_log][:3] == ["HTTP 500"] * 3
    now_clock.advance(3600)
    assert sender.send_due() == 0 and len(receiver.received) == 4


async def test_a_storm_sends_a_summary_not_a_post_per_failure(
    client: Client, store: Store, now_clock: FakeClock, receiver: Receiver,
    workers: Callable[..., Worker],
) -> None:
    rule, _ = create_rule(store, now_clock, "dev", event="run.failed",
                          webhook_url=receiver.url)
    await _fail(client, workers, 60)
    assert store.scan_failures().failures == 60
    sender = Sender(store, now_clock)
    assert sender.send_due(limit=100) == 5  # the storm limit; the summary waits
    now_clock.advance(60)
    assert sender.send_due(limit=100) == 1
    assert len(receiver.received) == 6
    summary = next(d for d in store.list_alert_deliveries("dev", rule.id) if d.summary_of)
    assert summary.summary_of == 55
    assert summary.payload["type"] == "alert.summary"
    assert summary.payload["data"]["count"] == 55
    assert len(summary.payload["data"]["samples"]) == 10


async def test_a_sender_killed_mid_post_loses_nothing(
    client: Client, store: Store, db_url: str, now_clock: FakeClock, receiver: Receiver,
    workers: Callable[..., Worker],
) -> None:
    rule, secret = create_rule(store, now_clock, "dev", event="run.failed",
                               webhook_url=receiver.url)
    await _fail(client, workers, 1)
    store.scan_failures()
    receiver.hold = threading.Event()  # the first post hangs until the sender is dead
    script = (
        "import sys; from outlast.store import open_store; from outlast._clock import "
        "SystemClock; from outlast._alerts import Sender; s = open_store(sys.argv[1]); "
        "Sender(s, SystemClock()).send_due()"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, db_url], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert receiver.arrived.wait(30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    receiver.hold.set()
    [pending] = store.list_alert_deliveries("dev", rule.id)
    assert pending.status == "pending" and pending.attempt_log == []
    sender = Sender(store, now_clock)
    assert sender.send_due() == 0  # still leased to the dead sender
    now_clock.set(time.time() + 31)  # past the dead sender's lease (it read the real clock)
    assert sender.send_due() == 1, store.list_alert_deliveries("dev", rule.id)
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    Webhook(secret).verify(second.body, second.headers)
    [delivered] = store.list_alert_deliveries("dev", rule.id)
    assert delivered.status == "delivered"


def test_backlog_and_no_worker_fire_once_per_episode(
    client: Client, store: Store, clock: FakeClock
) -> None:
    create_rule(store, clock, "dev", event="queue.backlog", webhook_url="http://x.invalid/",
                older_than=300)
    create_rule(store, clock, "dev", event="no_worker", webhook_url="http://x.invalid/")
    run = client.trigger(unserved, {})
    assert store.check_alert_conditions() == 0
    clock.advance(61)
    assert store.check_alert_conditions() == 1  # no worker after a minute
    clock.advance(240)
    assert store.check_alert_conditions() == 1  # backlog after five
    assert store.check_alert_conditions() == 0  # still the same episode
    client.cancel(run.id)
    assert store.check_alert_conditions() == 0
    client.trigger(unserved, {})
    clock.advance(301)
    assert store.check_alert_conditions() == 2  # a new episode
    events = sorted(d.event for d in store.list_alert_deliveries("dev"))
    assert events == ["no_worker", "no_worker", "queue.backlog", "queue.backlog"]


def test_other_features_raise_their_own_kinds(store: Store, clock: FakeClock) -> None:
    with pytest.raises(ValidationError, match="on: unknown event"):
        create_rule(store, clock, "dev", event="never.registered",
                    webhook_url="http://x.invalid/")
    register_event("usage.spike", "a task's usage jumped")
    rule, _ = create_rule(store, clock, "dev", event="usage.spike",
                          webhook_url="http://x.invalid/")
    assert store.raise_alert("dev", "usage.spike", {"task_id": "t", "factor": 9}) == 1
    assert store.raise_alert("prod", "usage.spike", {"task_id": "t"}) == 0  # env-scoped
    [d] = store.list_alert_deliveries("dev", rule.id)
    assert d.payload["data"] == {"task_id": "t", "factor": 9}
    with pytest.raises(ValidationError, match="webhook"):
        create_rule(store, clock, "dev", event="run.failed", webhook_url="ftp://x")


def test_a_worker_process_groups_the_failure_and_delivers_its_alert(
    db_url: str, receiver: Receiver
) -> None:
    """End to end: the scheduler loop of a real `outlast worker` scans, groups and posts."""
    from tests.apps.alerts_app import fails as e2e_fails

    store = open_store(db_url)  # the real clock, as the worker's
    _, secret = create_rule(store, store.clock, "dev", event="run.failed",
                            webhook_url=receiver.url)
    client = Client(store=store, env="dev")
    run = client.trigger(e2e_fails, {"ledger": 7})
    proc = spawn_worker(db_url, "tests.apps.alerts_app")
    try:
        assert receiver.arrived.wait(60), "no alert arrived"
        got = receiver.received[0]
        event = Webhook(secret).verify(got.body, got.headers)
        assert event["data"]["run_id"] == run.id
        [group] = store.list_error_groups("dev")
        assert group.message == "ledger <n> unreachable" and group.count == 1
    finally:
        proc.kill()
        proc.wait(10)
        store.close()


def test_old_deliveries_and_occurrences_are_pruned(
    store: Store, clock: FakeClock, client: Client
) -> None:
    register_event("usage.spike")
    rule, _ = create_rule(store, clock, "dev", event="usage.spike",
                          webhook_url="http://127.0.0.1:9/")
    store.raise_alert("dev", "usage.spike", {"n": 1})
    Sender(store, clock).send_due()  # nobody listens: pending, retried later
    store.raise_alert("dev", "usage.spike", {"n": 2})
    [d2, d1] = store.list_alert_deliveries("dev", rule.id)
    store.record_alert_attempt(d2.id, status_code=200, error=None, duration=0.1,
                               retry_at=None)
    clock.advance(31 * 86400)
    assert store.prune_alerts() == 1  # the delivered one
    assert [d.id for d in store.list_alert_deliveries("dev", rule.id)] == [d1.id]
