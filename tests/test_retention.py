"""Retention on both backends: pruning deletes exactly the finished runs past their
policy, with their journal, events, tags, waits and waitpoints; it keeps unfinished runs
and finished children of unfinished roots; per-task overrides win over the environment;
the dry run counts what a prune deletes; a pass stops at its bound; and on PostgreSQL a
claim goes through while a prune batch holds its locks. Policies through the store, the
HTTP API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast import Worker, logger, step, task, wait
from outlast._clock import FakeClock
from outlast._retention import DAY, Pruner, prune
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import Store
from tests.conftest import _pg_url, drop_pg_database, new_pg_database

ROOT = Path(__file__).resolve().parent.parent


@task(id="ret-leaf")
async def leaf(p: dict[str, Any]) -> dict[str, Any]:
    return p


@task(id="ret-full")
async def full(p: dict[str, Any]) -> Any:
    await step.run("a", lambda: 1)
    logger.info("working", n=1)
    await wait.sleep(60)
    r = await leaf.trigger_and_wait({"n": 1})
    return r.output


@task(id="ret-root-waits")
async def root_waits(p: dict[str, Any]) -> None:
    await leaf.trigger({"n": 2})  # fire and forget: finishes while its root waits
    token = await wait.create_token(timeout=timedelta(days=365))
    await wait.for_token(token)


@task(id="ret-a")
async def task_a(p: dict[str, Any]) -> None:
    return None


@task(id="ret-b")
async def task_b(p: dict[str, Any]) -> None:
    return None


TASKS = (leaf, full, root_waits, task_a, task_b)


@pytest.fixture(autouse=True)
def _no_background_pruning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' schedulers would prune as the clock moves: these tests prune by hand."""
    monkeypatch.setattr(Pruner, "step", lambda self: 0)


def _count(store: Store, table: str, column: str, ids: list[str]) -> int:
    with store._transaction() as tx:  # type: ignore[attr-defined]
        n = 0
        for i in ids:
            rows = store._raw(  # type: ignore[attr-defined]
                tx, f"SELECT COUNT(*) AS n FROM {table} WHERE {column} = :id", {"id": i})
            n += int(rows[0]["n"])
        return n


def _cancelled(client: Client, task_id: Any, n: int) -> list[str]:
    """n finished runs of a task, made fast: triggered, then cancelled while queued."""
    ids = [h.id for h in client.batch_trigger(task_id, [{"i": i} for i in range(n)])]
    client.bulk_cancel(task=task_id.id, batch_size=1000)
    return ids


async def test_prunes_expired_finished_runs_with_everything_attached(
        store: Store, client: Client, clock: FakeClock,
        workers: Callable[..., Worker]) -> None:
    worker = workers(*TASKS)
    old = client.trigger(full, {}, tags=["org:1", "org:2"])
    waiting = client.trigger(root_waits, {})
    await worker.run_until_idle()
    clock.advance(61)
    await worker.run_until_idle()
    assert client.retrieve(old.id).status == RunStatus.COMPLETED
    assert client.retrieve(waiting.id).status == RunStatus.WAITING
    (old_child,) = client.list_runs(parent_id=old.id)
    (kept_child,) = client.list_runs(parent_id=waiting.id)
    assert kept_child.status == RunStatus.COMPLETED
    gone = [old.id, old_child.id]
    assert _count(store, "journal", "run_id", gone) >= 3  # step, sleep, child
    assert _count(store, "run_events", "run_id", gone) >= 1
    assert _count(store, "run_tags", "run_id", gone) == 2
    assert _count(store, "waitpoints", "run_id", gone) >= 2

    clock.advance(31 * DAY)
    recent = client.trigger(task_a, {})
    await worker.run_until_idle()
    assert client.retrieve(recent.id).status == RunStatus.COMPLETED

    dry = prune(store, dry_run=True)
    assert dry.counts == {"dev": {"*": 2}}
    report = prune(store)
    assert report.runs == dry.runs == 2
    for run_id in gone:
        assert store.get_run("dev", run_id) is None
    for table in ("journal", "run_events", "run_tags", "waitpoints", "run_waits"):
        assert _count(store, table, "run_id", gone) == 0, table
    # Kept: the unfinished root (with its journal and token), its finished child, and the
    # run that finished a moment ago.
    for run_id in (waiting.id, kept_child.id, recent.id):
        assert store.get_run("dev", run_id) is not None
    assert _count(store, "journal", "run_id", [waiting.id]) >= 2
    assert _count(store, "waitpoints", "run_id", [waiting.id]) == 1
    assert prune(store, dry_run=True).runs == 0


def test_per_task_override_and_environment_policy(store: Store, client: Client,
                                                  clock: FakeClock) -> None:
    a = _cancelled(client, task_a, 3)
    b = _cancelled(client, task_b, 4)
    store.set_retention_policy("dev", "ret-a", 90)
    clock.advance(31 * DAY)
    assert prune(store, dry_run=True).counts == {"dev": {"ret-a": 0, "*": 4}}
    assert prune(store).runs == 4
    assert all(store.get_run("dev", i) is None for i in b)
    assert all(store.get_run("dev", i) is not None for i in a)
    store.set_retention_policy("dev", "ret-a", None)  # for ever
    store.set_retention_policy("dev", None, 1)
    clock.advance(100 * DAY)
    assert prune(store).runs == 0
    store.set_retention_policy("dev", "ret-a", 10)
    assert prune(store, dry_run=True).counts == {"dev": {"ret-a": 3, "*": 0}}
    assert prune(store).runs == 3
    # Another environment's runs and policy are its own.
    other = Client(store=store, env="staging")
    kept = [h.id for h in other.batch_trigger(task_b, [{}])]
    other.bulk_cancel(task="ret-b")
    clock.advance(2 * DAY)
    assert prune(store, env="dev").runs == 0
    assert store.get_run("staging", kept[0]) is not None


def test_a_pass_stops_at_its_bound_and_the_next_continues(store: Store, client: Client,
                                                          clock: FakeClock) -> None:
    ids = _cancelled(client, task_b, 25)
    clock.advance(31 * DAY)
    assert prune(store, dry_run=True).runs == 25
    first = prune(store, batch=10, max_batches=2)
    assert (first.runs, first.batches, first.more) == (20, 2, True)
    rest = prune(store, batch=10)
    assert (rest.runs, rest.more) == (5, False)
    assert all(store.get_run("dev", i) is None for i in ids)


def test_the_scheduler_prunes_in_bounded_steps(store: Store, client: Client,
                                               clock: FakeClock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real Pruner.step
    _cancelled(client, task_b, 30)
    clock.advance(31 * DAY)
    pruner = Pruner(store, batch=10, budget=0.0)  # one batch per step
    assert [pruner.step() for _ in range(4)] == [10, 10, 10, 0]
    assert pruner.step() == 0  # idle now: nothing until idle_interval has passed


@pytest.fixture
def pg_store(clock: FakeClock) -> Iterator[Store]:
    name = new_pg_database()
    s = open_store(_pg_url(name), clock)
    try:
        yield s
    finally:
        s.close()
        drop_pg_database(name)


async def test_claims_go_through_while_a_prune_batch_holds_its_locks(
        pg_store: Store, clock: FakeClock, workers: Callable[..., Worker]) -> None:
    store = pg_store
    client = Client(store=store, env="dev")
    _cancelled(client, task_b, 300)
    clock.advance(31 * DAY)
    locked, release = threading.Event(), threading.Event()
    list_param = store._list  # type: ignore[attr-defined]
    pruner_thread: list[threading.Thread] = []

    def hold(values: Any) -> Any:
        # Called inside prune_batch's transaction, after its SELECT … FOR UPDATE locked
        # the batch: hold the transaction open while the test claims.
        if threading.current_thread() in pruner_thread:
            locked.set()
            release.wait(30)
        return list_param(values)

    # prune() folds usage first; folded here, so the first list the pruner thread makes
    # is prune_batch's (the fold of an empty outbox makes none).
    store.aggregate_usage()
    store._list = hold  # type: ignore[attr-defined]
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(prune(store, batch=300).runs))
    pruner_thread.append(t)
    t.start()
    try:
        assert locked.wait(10)
        worker = Worker(store, tasks={t.id: t for t in TASKS}, env="dev")
        handle = client.trigger(task_a, {})
        started = time.monotonic()
        await worker.run_until_idle()
        elapsed = time.monotonic() - started
        assert client.retrieve(handle.id).status == RunStatus.COMPLETED
        assert t.is_alive()  # the batch still holds its locks
        assert elapsed < 5.0
        await worker.shutdown(grace=0)
    finally:
        release.set()
        t.join(30)
    assert result == [300]


async def test_policy_over_http_api(store: Store, client: Client, clock: FakeClock) -> None:
    key = create_key(store, "dev").secret
    _cancelled(client, task_b, 2)
    app = create_app(store, dashboard=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t",
                                 headers={"Authorization": f"Bearer {key}"}) as h:
        r = await h.get("/api/v1/retention")
        assert r.json() == {"env": "dev", "days": 30.0, "default": True, "tasks": {}}
        r = await h.put("/api/v1/retention", json={"days": 7})
        assert r.json()["days"] == 7.0 and r.json()["default"] is False
        r = await h.put("/api/v1/retention/tasks/ret-b", json={"days": None})
        assert r.json()["tasks"] == {"ret-b": None}
        r = await h.put("/api/v1/retention", json={"days": -1})
        assert r.status_code == 422 and "days" in r.text
        clock.advance(8 * DAY)
        assert (await h.get("/api/v1/retention/preview")).json()["runs"] == 0
        r = await h.delete("/api/v1/retention/tasks/ret-b")
        assert r.json()["tasks"] == {}
        assert (await h.get("/api/v1/retention/preview")).json()["runs"] == 2
        r = await h.delete("/api/v1/retention/tasks/ret-b")
        assert r.status_code == 404


def test_cli_retention_and_prune_dry_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    store = open_store(url)
    store.migrate()
    clock_now = store.now()
    client = Client(store=store, env="dev")
    _cancelled(client, task_b, 3)
    store.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "outlast", *args, "--database-url", url],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert cli("retention", "set", "--days", "0").returncode == 2
    out = cli("retention", "set", "--days", "0.00001")
    assert out.returncode == 0, out.stderr
    assert cli("retention", "set", "--forever", "--task", "other").returncode == 0
    shown = json.loads(cli("retention", "show", "--json").stdout)
    assert shown["days"] == 0.00001 and shown["tasks"] == {"other": None}
    while time.time() < clock_now + 2:  # past 0.864 s of retention
        time.sleep(0.2)
    dry = json.loads(cli("prune", "--dry-run", "--json").stdout)
    assert dry["runs"] == 3 and dry["dry_run"] is True
    done = json.loads(cli("prune", "--json").stdout)
    assert done["runs"] == 3
    assert json.loads(cli("prune", "--dry-run", "--json").stdout)["runs"] == 0


async def test_the_dashboard_tasks_page_shows_the_policy(store: Store) -> None:
    import re

    from tests.test_dashboard import _app, _client, _text

    d = await _client(_app(store, require_login=False))

    async def page_text() -> str:
        return re.sub(r"<[^>]+>", "", _text(await d.get("/tasks")))

    try:
        assert "kept 30 days (the default)" in await page_text()
        store.set_retention_policy("dev", None, 14)
        store.set_retention_policy("dev", "ret-a", None)
        page = await page_text()
        assert "kept 14 days after" in page and "ret-a for ever" in page
    finally:
        await d.http.aclose()


def test_dev_keeps_seven_days_unless_a_policy_is_set(store: Store) -> None:
    from outlast._retention import DEV_DAYS, effective_policy, ensure_dev_policy

    ensure_dev_policy(store, "dev")
    assert effective_policy(store, "dev").days == DEV_DAYS == 7
    store.set_retention_policy("dev", None, 60)
    ensure_dev_policy(store, "dev")
    assert effective_policy(store, "dev").days == 60


@task(id="ret-fails")
async def fails(p: dict[str, Any]) -> None:
    from outlast import AbortRun

    raise AbortRun("refused")


async def test_a_pruned_failed_run_leaves_the_errors_memory_but_not_its_group(
        store: Store, client: Client, clock: FakeClock,
        workers: Callable[..., Worker]) -> None:
    worker = workers(fails)
    handle = client.trigger(fails, {})
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.FAILED
    clock.advance(60)  # past the scan's lag
    store.scan_failures()  # what the scheduler's alert loop runs every few seconds
    assert _count(store, "error_occurrences", "run_id", [handle.id]) == 1
    clock.advance(31 * DAY)
    assert prune(store).runs == 1
    assert _count(store, "error_occurrences", "run_id", [handle.id]) == 0
    assert _count(store, "error_groups", "sample_run_id", [handle.id]) == 1
