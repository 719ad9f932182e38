"""Proofs that fail when a guarantee's mechanism is removed (issue 25), on both backends.

Each test here closes a gap where a mechanism of docs/explanation/guarantees.md could be
removed without any other test failing: SQLite's durability settings and a batch that
fails inside its transaction (C1), the HTTP client's request key when a response is lost
after the server committed (C1), replay of a committed step on a retry (C2), a crash
between a step body returning and its commit (C3), the lease-epoch half of the fence
(C4), and the compare-and-set that keeps a slow scheduler from undoing an edit (C6).
scripts/mutations removes each mechanism in turn and checks that these tests notice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from outlast import Retry, Worker, _schedule_firing, queue, step, task
from outlast._clock import FakeClock
from outlast._errors import ConfigurationError
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import EndSegment, StepDone, Store, WorkerInfo
from outlast.store.sqlite import SQLiteStore

from .conftest import spawn_worker

T = TypeVar("T")
COUNT: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _fresh_count() -> None:
    COUNT.clear()


def wait_for(what: str, cond: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- C1: SQLite's durability settings ---------------------------------------------------------


def _pragmas(store: Store) -> tuple[int, str]:
    assert isinstance(store, SQLiteStore)
    conn = store._conn  # the store's one connection: what its commits run under
    sync = conn.execute("PRAGMA synchronous").fetchone()["synchronous"]
    mode = conn.execute("PRAGMA journal_mode").fetchone()["journal_mode"]
    return int(sync), str(mode)


def test_sqlite_commits_under_full_synchronous_in_wal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acknowledged commit is on disk (C1): the store's connection really runs with
    synchronous=FULL (2) and a write-ahead log, unless the operator says NORMAL."""
    url = f"sqlite:///{tmp_path}/outlast.db"
    monkeypatch.delenv("OUTLAST_SQLITE_SYNCHRONOUS", raising=False)
    store = open_store(url)
    try:
        store.migrate()
        assert _pragmas(store) == (2, "wal")
    finally:
        store.close()
    monkeypatch.setenv("OUTLAST_SQLITE_SYNCHRONOUS", "normal")
    store = open_store(url)
    try:
        assert _pragmas(store) == (1, "wal")
    finally:
        store.close()
    monkeypatch.setenv("OUTLAST_SQLITE_SYNCHRONOUS", "sometimes")
    with pytest.raises(ConfigurationError, match="OUTLAST_SQLITE_SYNCHRONOUS"):
        open_store(url)


# -- C1: a batch is one transaction -----------------------------------------------------------


@task(id="proof-item")
async def proof_item(p: dict[str, Any]) -> None:
    return None


def _refuse_inside_the_batch(backend: str, db_url: str, refused: str) -> None:
    """Make the database itself fail part-way through a batch's transaction: refuse a
    run whose payload says ``poison`` (the 500th of the batch's runs), or the 500th tag
    row, which is written after every run of the batch (a later statement)."""
    if refused == "run":
        sqlite_when = "NEW.payload LIKE '%poison%'"
        pg_if = "NEW.payload LIKE '%poison%'"
    else:
        sqlite_when = "(SELECT COUNT(*) FROM run_tags) >= 499"
        pg_if = "(SELECT COUNT(*) FROM run_tags) >= 499"
    table = "runs" if refused == "run" else "run_tags"
    if backend == "sqlite":
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            conn.execute(
                f"CREATE TRIGGER proof_refuse BEFORE INSERT ON {table} WHEN {sqlite_when} "
                "BEGIN SELECT RAISE(ABORT, 'item refused by the database'); END"
            )
        return
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION proof_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {pg_if} THEN RAISE EXCEPTION 'item refused by the database'; "
            "END IF; RETURN NEW; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER proof_refuse BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION proof_refuse()"
        )


@pytest.mark.parametrize("refused", ["run", "tag"])
def test_a_batch_that_fails_inside_its_transaction_writes_nothing(
    backend: str, db_url: str, store: Store, client: Client, refused: str
) -> None:
    """C1: the database refuses the 500th of 1,000 items mid-insert (its run row, or its
    tag row after all runs were written); nothing the batch wrote before survives, and
    the store works on afterwards."""
    _refuse_inside_the_batch(backend, db_url, refused)
    items: list[dict[str, Any]] = [{"i": i} for i in range(1000)]
    items[499]["poison"] = refused == "run"
    with pytest.raises(Exception, match="item refused by the database"):
        client.batch_trigger(proof_item, items, tags=["batch"])
    assert store.count_runs("dev") == {}
    assert store.list_runs("dev", limit=10) == []

    handles = client.batch_trigger(proof_item, [{"i": i} for i in range(1000)])
    assert len({h.id for h in handles}) == 1000
    assert store.count_runs("dev") == {proof_item.id: {"QUEUED": 1000}}


# -- C1: the HTTP client's request key, after a lost response ----------------------------------


class LoseResponses(httpx.BaseTransport):
    """Into the ASGI app in-process; when ``lose`` is set, the next request reaches the
    server and commits, and its response is lost on the way back (a reset connection)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.lose = False
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        import asyncio

        async def forward() -> httpx.Response:
            inner = httpx.Request(request.method, request.url, headers=request.headers,
                                  content=request.read())
            resp = await self.inner.handle_async_request(inner)
            return httpx.Response(resp.status_code, headers=resp.headers,
                                  content=await resp.aread())

        resp = asyncio.run(forward())
        self.keys.append(request.headers.get("idempotency-key"))
        if self.lose:
            self.lose = False
            raise httpx.ReadError("connection reset after the server answered", request=request)
        return resp


@pytest.fixture
def over_http(store: Store) -> Iterator[tuple[Client, LoseResponses]]:
    secret = create_key(store, "dev").secret
    transport = LoseResponses(create_app(store, dashboard=False))
    client = Client(api_url="http://outlast.test", secret_key=secret)
    assert client._http is not None
    client._http._http.close()
    client._http._http = httpx.Client(transport=transport, base_url="http://outlast.test",
                                      headers={"Authorization": f"Bearer {secret}"})
    try:
        yield client, transport
    finally:
        client.close()


def test_http_trigger_retried_after_a_lost_response_returns_the_first_run(
    store: Store, over_http: tuple[Client, LoseResponses]
) -> None:
    """C1 over HTTP: the server committed the trigger, its answer was lost, the client
    retried; the retry carries the same request key and answers the first run."""
    client, transport = over_http
    transport.lose = True
    handle = client.trigger(proof_item, {"i": 1})
    first, retry = transport.keys
    assert first and first == retry
    assert store.count_runs("dev") == {proof_item.id: {"QUEUED": 1}}
    [run] = store.list_runs("dev", limit=10)
    assert run.id == handle.id

    transport.keys.clear()
    transport.lose = True
    handles = client.batch_trigger(proof_item, [{"i": i} for i in range(3)])
    first, retry = transport.keys
    assert first and first == retry
    assert store.count_runs("dev") == {proof_item.id: {"QUEUED": 4}}
    assert {r.id for r in store.list_runs("dev", limit=10)} == {handle.id} | {
        h.id for h in handles
    }


# -- C2: a retry replays committed steps from the journal -------------------------------------


def _step_a() -> str:
    COUNT["a"] += 1
    return "a-result"


def _step_b(attempt: int) -> str:
    COUNT["b"] += 1
    if attempt == 1:
        raise RuntimeError("the first attempt fails in step b")
    return "b-result"


@task(id="proof-two-steps",
      retry=Retry(max_attempts=3, factor=1.0, min_delay=0.0, max_delay=0.0, jitter=False))
async def proof_two_steps(p: None) -> list[str]:
    from outlast import current_run

    a = await step.run("a", _step_a)
    b = await step.run("b", _step_b, current_run().attempt)
    return [a, b]


async def test_a_retry_answers_the_committed_step_from_the_journal(
    store: Store, client: Client
) -> None:
    """C2 across attempts: attempt 1 commits step a and fails in step b; attempt 2 gets
    a's result from the journal without calling it, and runs b again."""
    handle = await proof_two_steps.trigger(None)
    worker = Worker(store, tasks={proof_two_steps.id: proof_two_steps}, env="dev",
                    life_lock=False)
    try:
        await worker.run_until_idle()
    finally:
        await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.attempt == 2
    assert run.output == ["a-result", "b-result"]
    assert COUNT == {"a": 1, "b": 2}
    assert {e.key: e.attempt for e in store.journal(handle.id)} == {"a": 1, "b": 2}


# -- C3: a crash between a step body's return and its commit ----------------------------------


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


class CommitBlocker:
    """Holds back every commit of a run's ops, from the database's side: SQLite's write
    lock, or a lock on the run's row on PostgreSQL (the fence reads it FOR NO KEY UPDATE)."""

    def __init__(self, backend: str, db_url: str, run_id: str) -> None:
        if backend == "sqlite":
            self.conn: Any = sqlite3.connect(db_url.removeprefix("sqlite:///"),
                                             isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = psycopg.connect(db_url)
            self.conn.execute("SELECT id FROM runs WHERE id = %s FOR UPDATE", (run_id,))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def _ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _registered(store: Store, proc: subprocess.Popen[bytes]) -> str | None:
    assert proc.poll() is None, f"worker {proc.pid} exited with {proc.returncode}"
    for w in store.list_workers("dev"):
        if w["pid"] == proc.pid and w["status"] == "alive":
            return str(w["id"])
    return None


def test_sigkill_between_a_step_body_returning_and_its_commit_runs_it_again_with_its_key(
    backend: str, db_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """C3: the body's effect happened and the worker died before its result committed
    (the commit is held back by a database lock until after the SIGKILL). The next
    attempt runs the body again, with the same idempotency key; twice in all."""
    app = "tests.apps.proof_app"
    store = open_store(db_url)
    client = Client(store=store, env="dev")
    try:
        a = spawn_worker(db_url, app, concurrency=1)
        procs.append(a)
        wait_for("worker a to register", lambda: _registered(store, a))
        ledger, gate = tmp_path / "ledger.jsonl", tmp_path / "gate"
        run_id = client.trigger("proof-charge", {"ledger": str(ledger), "gate": str(gate)}).id
        wait_for("the body to begin", lambda: _ledger(ledger))

        blocker = CommitBlocker(backend, db_url, run_id)
        try:
            gate.touch()
            wait_for("the effect", lambda: [e for e in _ledger(ledger) if e["ev"] == "effect"])
            os.kill(a.pid, signal.SIGKILL)
            a.wait(timeout=10)
        finally:
            blocker.release()
        assert store.journal(run_id) == []  # the result never committed

        b = spawn_worker(db_url, app, concurrency=1)
        procs.append(b)
        run = wait_for("the run to end",
                       lambda: (r := client.retrieve(run_id)).status.is_final and r, 60)
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.attempt == 2
        assert run.output == f"charged@{b.pid}"
        effects = [e for e in _ledger(ledger) if e["ev"] == "effect"]
        assert [(e["pid"], e["attempt"]) for e in effects] == [(a.pid, 1), (b.pid, 2)]
        assert effects[0]["key"] == effects[1]["key"] == f"{run_id}:charge"
        assert [(e.key, e.attempt) for e in store.journal(run_id)] == [("charge", 2)]
    finally:
        store.close()


# -- C4: the lease epoch fences a worker's own earlier attempt --------------------------------


@task(id="proof-fenced")
async def proof_fenced(p: None) -> None:
    return None


def _stepdone(run_id: str, epoch: int, key: str, now: float) -> StepDone:
    return StepDone(run_id=run_id, epoch=epoch, key=key, kind="step", fingerprint=None,
                    output='"v"', attempt=1, started_at=now, finished_at=now)


def test_an_old_epoch_is_refused_though_its_worker_is_alive_and_holds_the_run(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """C4, the epoch alone: worker a's first attempt ended (a retry) and the same, live
    worker claimed the run again; a late commit of the first attempt (a step body that
    outlived it) is refused, though the worker row is alive, within its lease, and the
    run's worker. Only the epoch tells the two attempts apart."""
    run_id = client.trigger(proof_fenced, None).id
    serves = {proof_fenced.queue.name: [proof_fenced.id]}
    store.register_worker(WorkerInfo(id="worker_a", env="dev", host="test", pid=1,
                                     concurrency=1, tasks=[proof_fenced.id],
                                     lease_seconds=30.0))
    store.register_worker(WorkerInfo(id="worker_b", env="dev", host="test", pid=2,
                                     concurrency=1, tasks=[proof_fenced.id],
                                     lease_seconds=30.0))
    clock.advance(1)
    other = client.trigger(proof_fenced, None).id  # queued behind it
    (first,) = store.claim("worker_a", "dev", serves, 1)
    assert first.run.id == run_id
    (taken,) = store.claim("worker_b", "dev", serves, 1)
    assert taken.run.id == other  # one holder at a time: a's run is not claimed again
    now = clock.now()
    retry = EndSegment(run_id=run_id, epoch=first.epoch, outcome="retry", retry_at=now,
                       error='{"message": "boom"}')
    assert store.apply("worker_a", [retry]) == [True]
    (second,) = store.claim("worker_a", "dev", serves, 1)
    assert second.epoch == first.epoch + 1
    run = store.get_run("dev", run_id)
    assert run is not None and run.worker_id == "worker_a" and run.attempt == 2

    late = [_stepdone(run_id, first.epoch, "late", now),
            EndSegment(run_id=run_id, epoch=first.epoch, outcome="completed", output='"old"')]
    assert store.apply("worker_a", late) == [False, False]
    # The current epoch from a live worker that is not the run's: refused too.
    assert store.apply("worker_b", [_stepdone(run_id, second.epoch, "thief", now)]) == [False]
    assert store.journal(run_id) == []
    run = store.get_run("dev", run_id)
    assert run is not None and run.status == RunStatus.EXECUTING and run.output is None

    done = EndSegment(run_id=run_id, epoch=second.epoch, outcome="completed", output='"new"')
    assert store.apply("worker_a", [_stepdone(run_id, second.epoch, "now", now), done]) == [
        True, True
    ]
    run = store.get_run("dev", run_id)
    assert run is not None and run.status == RunStatus.COMPLETED and run.output == "new"


# -- C5, C9: a lapsed worker's slot comes back, and its attempt counts -------------------------


@task(id="proof-limited", queue=queue("proof-one", concurrency_limit=1),
      retry=Retry(max_attempts=2, min_delay=0.0, max_delay=0.0, jitter=False))
async def proof_limited(p: None) -> None:
    return None


def _executing(store: Store) -> int:
    [q] = [q for q in store.list_queues("dev") if q["name"] == "proof-one"]
    return int(q["executing"])


def test_a_lapsed_workers_slot_comes_back_and_its_attempt_counts(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """C5: the reaper gives a lost holder's slot back, so the queue (limit 1) serves the
    run again; C9: each lost attempt counts, so a run that keeps losing its worker ends
    FAILED (worker_lost) after max_attempts instead of looping."""
    store.declare_queues("dev", [proof_limited.queue.spec()])
    run_id = client.trigger(proof_limited, None).id
    serves = {"proof-one": [proof_limited.id]}
    for attempt, worker_id in ((1, "worker_a"), (2, "worker_b")):
        store.register_worker(WorkerInfo(id=worker_id, env="dev", host="test", pid=attempt,
                                         concurrency=1, tasks=[proof_limited.id],
                                         lease_seconds=30.0))
        (claim,) = store.claim(worker_id, "dev", serves, 1)
        assert claim.run.id == run_id and claim.run.attempt == attempt
        assert _executing(store) == 1
        clock.advance(31)  # its lease lapses; a peer's reaper finds it
        report = store.tick()
        assert (report.reaped_workers, report.requeued_runs) == (1, 1)
        assert _executing(store) == 0, "the dead holder's slot did not come back"
    run = store.get_run("dev", run_id)
    assert run is not None and run.status == RunStatus.FAILED and run.attempt == 2
    assert run.error is not None and run.error["code"] == "worker_lost"


# -- C6: a slow scheduler cannot undo an edit -------------------------------------------------


@task(id="proof-cron")
async def proof_cron(p: Any) -> None:
    return None


def test_a_slow_scheduler_does_not_overwrite_a_schedule_edited_since_it_read_it(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """C6's compare-and-set: a scheduler read the schedule due at 10:10 and stalled; the
    schedule was edited to hourly meanwhile. The stale fire writes nothing: no run for
    10:10, and the edited next slot (11:00) stands."""
    clock.set(1_780_308_030.0)  # 2026-06-01T10:00:30Z
    store.publish_tasks("dev", [proof_cron.definition()])
    s = client.create_schedule(proof_cron.id, "*/10 * * * *")
    assert s.next_run_at == 1_780_308_600.0  # 10:10
    clock.set(1_780_308_605.0)  # 10:10:05, the slot is due
    [seen] = store.due_schedules(clock.now(), 10)
    stale = _schedule_firing._prepare_fire(store, seen, clock.now(), {})
    assert stale.slot == 1_780_308_600 and stale.next_run_at == 1_780_309_200.0  # 10:20

    edited = client.update_schedule(s.id, cron="0 * * * *")
    assert edited.next_run_at == 1_780_311_600.0  # 11:00
    assert store.fire_schedules([stale]) == [None]
    assert store.list_runs("dev", limit=10) == []
    after = store.get_schedule("dev", s.id)
    assert after is not None
    assert (after.cron, after.next_run_at) == ("0 * * * *", 1_780_311_600.0)

    clock.set(1_780_311_601.0)  # 11:00:01: the edited schedule fires its own slot, once
    assert _schedule_firing.fire_due(store) == 1
    assert [r.payload["timestamp"] for r in store.list_runs("dev", limit=10)] == [
        "2026-06-01T11:00:00.000Z"
    ]


# -- the guarantees page names real tests and every mutation ---------------------------------


def test_the_guarantees_page_names_real_tests_and_every_mutation() -> None:
    """docs/explanation/guarantees.md maps each promise to tests and to the mutations of
    scripts/mutations; a renamed test or a mutation left off the page fails here."""
    import re
    import runpy

    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "explanation" / "guarantees.md").read_text()
    mutations = runpy.run_path(str(root / "scripts" / "mutations"))["MUTATIONS"]
    current = ""
    missing = []
    for token in re.findall(r"`([^`]+)`", page):
        found = re.fullmatch(r"(tests/[\w/]+\.py)?::(\w+)", token)
        if found is None:
            continue
        current = found.group(1) or current
        source = (root / current).read_text()
        if not re.search(rf"def {found.group(2)}\(", source):
            missing.append(f"{current}::{found.group(2)}")
    assert missing == [], f"the page names tests that do not exist: {missing}"
    named = set(re.findall(r"`(c\d+-[a-z0-9-]+)`", page))
    assert named == {m.name for m in mutations}
    for m in mutations:  # each under its own guarantee's section
        section = page.split(f"## {m.guarantee} ")[1].split("\n## ")[0]
        assert f"`{m.name}`" in section, f"{m.name} is not listed under {m.guarantee}"
