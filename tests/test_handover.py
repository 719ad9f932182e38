"""PostgreSQL: a single trigger hands its run to an idle worker that offered to take one
(outlast/store/_pg_handover.py): the run is written claimed in the trigger's commit,
under every rule a claim keeps (C5 limits, C10 a live holder, C11 versions), and the
worker hears of it by its notification, or else at its next claim."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from outlast import queue, task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import Store, open_store
from outlast.store._versions_base import VersionScope
from outlast.store.base import WorkerInfo
from outlast.worker import Worker


@task(id="ho-noop", queue=queue("ho-queue"))
async def noop(payload: Any) -> int:
    return 2 * int(payload)


@task(id="ho-limited", queue=queue("ho-limited", concurrency_limit=1))
async def limited(payload: Any) -> None:
    return None


SERVES = {"ho-queue": [noop.id], "ho-limited": [limited.id]}


@pytest.fixture
def backend() -> str:
    return "postgres"


def _register(store: Store, worker_id: str) -> None:
    store.register_worker(WorkerInfo(id=worker_id, env="dev", host="test", pid=1,
                                     concurrency=10, tasks=[noop.id, limited.id],
                                     lease_seconds=30.0))


def _ready(store: Store, client: Client, worker_id: str, *tasks: Any,
           scope: VersionScope | None = None) -> None:
    """``worker_id`` registered, the queues' rows made (a first trigger, cancelled), and
    an offer posted by a claim that found nothing."""
    store.declare_queues("dev", [t.queue.spec() for t in (noop, limited)])
    for t in tasks:
        client.cancel(client.trigger(t, 0).id)
    _register(store, worker_id)
    _ok, claims = store.apply_and_claim(worker_id, [], "dev", SERVES, 1, scope=scope,
                                        offer=True)
    assert claims == []


def _rows(db_url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql).fetchall()


def _offers(db_url: str) -> list[dict[str, Any]]:
    return _rows(db_url, "SELECT * FROM worker_offers")


def _executing(db_url: str, name: str) -> tuple[int, int]:
    """(queue row's count, its no-key slot row's count) of runs holding a slot."""
    got = _rows(db_url, f"SELECT q.executing AS q, s.executing AS s FROM queues q JOIN "
                        f"queue_slots s ON s.env = q.env AND s.queue = q.name AND s.ckey = '' "
                        f"WHERE q.name = '{name}'")
    return got[0]["q"], got[0]["s"]


def test_a_trigger_hands_its_run_to_the_offering_worker(store: Store, client: Client,
                                                        db_url: str) -> None:
    _ready(store, client, "w_ho", noop)
    handle = client.trigger(noop, 1)
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.EXECUTING and run.worker_id == "w_ho"
    assert run.lease_epoch == 1 and run.started_at is not None
    assert _executing(db_url, "ho-queue") == (1, 1)
    assert [o["run_id"] for o in _offers(db_url)] == [handle.id]  # spent
    # The next trigger finds no offer: queued, as before.
    assert client.retrieve(client.trigger(noop, 2).id).status == RunStatus.QUEUED


def test_a_trigger_that_saw_no_offer_sends_the_plain_statement_once(
    store: Store, client: Client, db_url: str
) -> None:
    # The hand-over's statement costs more even with no offer to find, so a store sends
    # it only while the last single trigger saw one: after a trigger that saw none, the
    # next is queued plainly (and sees the offer), and the one after is handed over.
    store.declare_queues("dev", [noop.queue.spec()])
    client.cancel(client.trigger(noop, 0).id)
    _register(store, "w_ho")
    first = client.trigger(noop, 1)  # no offer yet: queued, and none seen
    assert client.retrieve(first.id).status == RunStatus.QUEUED
    client.cancel(first.id)  # nothing queued ahead of what follows
    _ok, claims = store.apply_and_claim("w_ho", [], "dev", SERVES, 1, offer=True)
    assert claims == [] and _offers(db_url)
    second = client.trigger(noop, 2)
    assert client.retrieve(second.id).status == RunStatus.QUEUED
    client.cancel(second.id)
    assert client.retrieve(client.trigger(noop, 3).id).status == RunStatus.EXECUTING


def test_the_next_claim_returns_a_hand_over_once(store: Store, client: Client, db_url: str) -> None:
    # Its notification may never have come: the claim that takes the offer back returns
    # the run, marked, so a worker that heard of it already drops it.
    _ready(store, client, "w_ho", noop)
    handle = client.trigger(noop, 1)
    _ok, claims = store.apply_and_claim("w_ho", [], "dev", SERVES, 1, offer=True)
    assert [(c.run.id, c.epoch, c.handed_over) for c in claims] == [(handle.id, 1, True)]
    _ok, claims = store.apply_and_claim("w_ho", [], "dev", SERVES, 1, offer=True)
    assert claims == []
    assert [o["run_id"] for o in _offers(db_url)] == [None]  # on offer again


def test_a_full_key_is_not_handed_a_run(store: Store, client: Client, db_url: str) -> None:
    # C5: the queue's one slot is taken by a run this worker claimed, and its claim came
    # back short of its limit of two: an offer, yet the next run waits.
    _ready(store, client, "w_ho", limited)
    first = client.trigger(limited, 1)
    _ok, claims = store.apply_and_claim("w_ho", [], "dev", SERVES, 2, offer=True)
    assert [c.run.id for c in claims] == [first.id]
    assert _offers(db_url)
    second = client.trigger(limited, 2)
    assert client.retrieve(second.id).status == RunStatus.QUEUED
    assert _executing(db_url, "ho-limited") == (1, 1)


def test_a_run_queued_before_is_not_passed_over(store: Store, client: Client, db_url: str,
                                                clock: FakeClock) -> None:
    _ready(store, client, "w_ho", noop)
    other = Client(store=open_store(db_url, clock), env="dev")  # queues without handing
    try:
        earlier = other.trigger(noop, 1)
    finally:
        other._transport._store.close()  # type: ignore[attr-defined]
    later = client.trigger(noop, 2)
    assert client.retrieve(earlier.id).status == RunStatus.QUEUED
    assert client.retrieve(later.id).status == RunStatus.QUEUED


def test_a_worker_past_its_lease_is_not_handed_a_run(store: Store, client: Client,
                                                      clock: FakeClock) -> None:
    # C10: the holder must be alive with its lease current on the database clock.
    _ready(store, client, "w_ho", noop)
    clock.advance(31.0)
    handle = client.trigger(noop, 1)
    assert client.retrieve(handle.id).status == RunStatus.QUEUED


@pytest.mark.parametrize(("new_task_ids", "handed"), [((), False), ((noop.id,), True)])
def test_a_new_run_goes_only_to_a_worker_current_for_its_task(
    store: Store, client: Client, new_task_ids: tuple[str, ...], handed: bool
) -> None:
    # C11: a run locked to no version is handed, and locked, only to a worker of the
    # version current for its task, as a claim would take it.
    _ready(store, client, "w_ho", noop, scope=VersionScope("v1", new_task_ids))
    run = client.retrieve(client.trigger(noop, 1).id)
    if handed:
        assert (run.status, run.worker_id, run.version) == (RunStatus.EXECUTING, "w_ho", "v1")
    else:
        assert (run.status, run.worker_id) == (RunStatus.QUEUED, None)


async def _until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("heard", [True, False])
async def test_a_worker_runs_what_it_is_handed(
    store: Store, db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, heard: bool
) -> None:
    # Heard: the notification starts the run (the poll is an hour away). Not heard (its
    # notifications dropped): the worker's next claim, at its poll, starts it.
    if not heard:
        monkeypatch.setattr(store, "take_handovers", lambda: ([], True))
    worker = Worker(store, tasks={noop.id: noop}, env="dev", scheduler=False,
                    poll_interval=3600.0 if heard else 0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    client = Client(store=open_store(db_url, clock), env="dev")
    try:
        # Offers are made once the worker's loop hears its notifications.
        await _until(lambda: worker._wakeups.watching, "the worker never waited for work")
        for payload in (1, 2, 3):
            handle = client.trigger(noop, payload)
            await _until(lambda h=handle: client.retrieve(h.id).is_final, "never ran")  # type: ignore[misc]
            run = client.retrieve(handle.id)
            assert run.status == RunStatus.COMPLETED and run.output == 2 * payload
        # The first trigger made the queue's rows (a transaction, no hand-over), and its
        # claim the worker's first offer; the later ones found an offer.
        assert len(worker._handovers) == 2
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        client._transport._store.close()  # type: ignore[attr-defined]
    assert _offers(db_url) == []  # a stopped worker offers nothing


RELEASE: dict[str, asyncio.Event] = {}


@task(id="ho-blocker", queue=queue("ho-queue"))
async def blocker(payload: Any) -> None:
    await RELEASE["event"].wait()


async def test_a_stopping_worker_hands_back_what_it_is_handed(
    store: Store, db_url: str, clock: FakeClock
) -> None:
    # Between the start of a shutdown and the worker's row saying stopped, a trigger may
    # still hand it a run: it goes back to its queue unstarted, its attempt unspent.
    RELEASE["event"] = asyncio.Event()
    worker = Worker(store, tasks={noop.id: noop, blocker.id: blocker}, env="dev",
                    scheduler=False, poll_interval=3600.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    client = Client(store=open_store(db_url, clock), env="dev")
    try:
        await _until(lambda: worker._wakeups.watching, "the worker never waited for work")
        held = client.trigger(blocker, 0)  # its claim comes back short: an offer
        await _until(lambda: held.id in worker.active and bool(_offers(db_url)), "no offer")
        stop.set()  # the shutdown waits for the blocker
        await _until(lambda: worker._stopping, "the worker never began stopping")
        handed = client.trigger(noop, 1)
        await _until(lambda: client.retrieve(handed.id).worker_id is None
                     and client.retrieve(handed.id).status == RunStatus.QUEUED,
                     "the hand-over was not handed back")
        run = client.retrieve(handed.id)
        assert run.attempt == 1 and run.started_at is not None  # written claimed, then back
        assert [key for key in worker._handovers] == [(handed.id, 1)]
    finally:
        RELEASE["event"].set()
        stop.set()
        await asyncio.wait_for(running, 30)
        client._transport._store.close()  # type: ignore[attr-defined]


STARTS: dict[str, int] = {}


@task(id="ho-long", queue=queue("ho-long-queue"))
async def long_one(payload: Any) -> None:
    STARTS[payload] = STARTS.get(payload, 0) + 1
    await RELEASE["event"].wait()


async def test_a_hand_over_still_running_is_not_started_again_by_a_late_claim(
    store: Store, db_url: str, clock: FakeClock
) -> None:
    # The claim after a hand-over returns it again (it takes the offer back); however
    # late that comes, and with the worker's memory of hand-overs gone, a run executing
    # here is not started a second time (C3, C4).
    RELEASE["event"], STARTS = asyncio.Event(), globals()["STARTS"]
    STARTS.clear()
    worker = Worker(store, tasks={long_one.id: long_one}, env="dev", scheduler=False,
                    poll_interval=0.1)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    client = Client(store=open_store(db_url, clock), env="dev")
    try:
        await _until(lambda: worker._wakeups.watching, "the worker never waited for work")
        first = client.trigger(long_one, "first")  # queued and claimed: then an offer
        await _until(lambda: first.id in worker.active and bool(_offers(db_url)), "no offer")
        handed = client.trigger(long_one, "handed")
        await _until(lambda: handed.id in worker.active, "the hand-over never started")
        worker._handovers.clear()
        # The next claims (every 0.1 s) take the spent offer back with the run.
        await _until(lambda: all(o["run_id"] is None for o in _offers(db_url)),
                     "the offer was never taken back")
        await asyncio.sleep(0.3)
        assert STARTS == {"first": 1, "handed": 1}
    finally:
        RELEASE["event"].set()
        stop.set()
        await asyncio.wait_for(running, 30)
        client._transport._store.close()  # type: ignore[attr-defined]
