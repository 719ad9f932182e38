"""How a worker batches: claims ride on the commits that end runs, and quick runs are
claimed a few ahead. On real SQLite and real PostgreSQL.

Neither may cost a guarantee: user code never runs more than ``concurrency`` at once,
runs held ready are handed back on shutdown with their attempt unspent, and a run
cancelled while held ready ends CANCELED without its code ever running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest

from outlast import Worker, queue, task
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import Claim, EndSegment, Op, Store
from outlast.tasks import Task

RUNNING = {"now": 0, "max": 0}
STARTED: list[int] = []
GATE: dict[str, asyncio.Event] = {}


@task(id="batching-quick")
async def quick(n: int) -> int:
    RUNNING["now"] += 1
    RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    STARTED.append(n)
    for _ in range(3):  # a few loop turns, so overlapping runs would be seen
        await asyncio.sleep(0)
    RUNNING["now"] -= 1
    return n


@task(id="batching-one-at-a-time", queue=queue("batching-serial", concurrency_limit=1))
async def serial(n: int) -> int:
    return n


@task(id="batching-blocked")
async def blocked(n: int) -> int:
    STARTED.append(n)
    await GATE.setdefault("open", asyncio.Event()).wait()
    return n


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNNING.update(now=0, max=0)
    STARTED.clear()
    GATE.clear()


Calls = list[tuple[list[Op], int, list[Claim]]]


@pytest.fixture
async def workers(store: Store) -> AsyncIterator[Callable[..., tuple[Worker, Calls]]]:
    """Workers whose every commit batch is recorded: (ops, claim limit, claims)."""
    made: list[Worker] = []

    def make(*tasks: Task[Any, Any], **options: Any) -> tuple[Worker, Calls]:
        calls: Calls = []
        real = store.apply_and_claim

        def recording(
            worker_id: str,
            ops: Sequence[Op],
            env: str,
            serves: Any,
            limit: int,
        ) -> tuple[list[bool], list[Claim]]:
            ok, claims = real(worker_id, ops, env, serves, limit)
            calls.append((list(ops), limit, claims))
            return ok, claims

        store.apply_and_claim = recording  # type: ignore[method-assign]
        w = Worker(store, tasks={t.id: t for t in tasks}, env="dev", **options)
        made.append(w)
        return w, calls

    yield make
    for w in made:
        await w.shutdown(grace=0)


async def test_a_finished_runs_slot_is_refilled_in_the_commit_that_ends_it(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    handles = client.batch_trigger(serial, list(range(5)))
    worker, calls = workers(serial)
    await worker.run_until_idle()
    assert [client.retrieve(h.id).status for h in handles] == [RunStatus.COMPLETED] * 5
    refills = [
        claims
        for ops, _, claims in calls
        if any(isinstance(op, EndSegment) and op.outcome == "completed" for op in ops)
        and claims
    ]
    # The queue allows one at a time: runs 2-5 each started in the commit of the one before.
    assert len(refills) == 4
    assert all(len(claims) == 1 for claims in refills)


async def test_quick_runs_are_claimed_ahead_yet_never_run_beyond_concurrency(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    client.batch_trigger(quick, list(range(300)))
    worker, calls = workers(quick, concurrency=3, prefetch=3)
    await worker.run_until_idle()
    assert sorted(STARTED) == list(range(300))
    assert RUNNING["max"] <= 3
    # Once runs proved short, batches claimed beyond the free slots.
    assert max(limit for _, limit, _ in calls) > 3


async def test_no_prefetch_claims_only_free_slots(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    client.batch_trigger(quick, list(range(60)))
    worker, calls = workers(quick, concurrency=3, prefetch=0)
    await worker.run_until_idle()
    assert sorted(STARTED) == list(range(60))
    assert max(limit for _, limit, _ in calls) <= 3


async def _hold_ready(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> tuple[Worker, list[str]]:
    """One blocked run executing and five claimed and held ready behind it."""
    ids = [h.id for h in client.batch_trigger(blocked, list(range(6)))]
    worker, _ = workers(blocked, concurrency=1, prefetch=5)
    await worker.start(background=False)
    worker._avg_seconds = 0.001  # as if recent runs were short: claim ahead
    await worker._claim()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(STARTED) == 1 and len(worker._ready) == 5
    assert {client.retrieve(i).status for i in ids} == {RunStatus.EXECUTING}
    return worker, ids


async def test_runs_held_ready_go_back_on_shutdown_with_their_attempt_unspent(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    worker, ids = await _hold_ready(client, workers)
    await worker.shutdown(grace=0)
    runs = [client.retrieve(i) for i in ids]
    assert [r.status for r in runs] == [RunStatus.QUEUED] * 6
    assert [r.attempt for r in runs] == [1] * 6
    assert len(STARTED) == 1


async def test_a_run_cancelled_while_held_ready_never_starts(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    worker, _ = await _hold_ready(client, workers)
    held = worker._ready[-1].run.id
    client.cancel(held)
    await worker.beat()
    await worker.committer.flush()
    assert client.retrieve(held).status == RunStatus.CANCELED
    assert held not in {c.run.id for c in worker._ready}
    GATE["open"].set()
    await worker.run_until_idle()
    assert client.retrieve(held).status == RunStatus.CANCELED
    assert len(STARTED) == 5  # the blocked one and the four still held; not the cancelled


async def test_a_claim_reads_the_keys_of_queues_with_queued_runs_only(
    client: Client, store: Store, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    # A worker serving many queues would otherwise pay a key scan and an empty claim
    # per queue on every commit that claims.
    reads: list[str] = []
    real = store._transaction  # type: ignore[attr-defined]

    class Spy:
        def __init__(self, tx: Any) -> None:
            self.tx = tx

        def q(self, name: str, /, **params: Any) -> Any:
            if name == "open_slots":
                reads.append(params["queue"])
            return self.tx.q(name, **params)

        def __getattr__(self, attr: str) -> Any:
            return getattr(self.tx, attr)

    @contextlib.contextmanager
    def spying() -> Iterator[Spy]:
        with real() as tx:
            yield Spy(tx)

    store._transaction = spying  # type: ignore[attr-defined]
    handles = client.batch_trigger(serial, list(range(3)))
    worker, calls = workers(quick, serial, blocked)
    await worker.run_until_idle()
    assert [client.retrieve(h.id).status for h in handles] == [RunStatus.COMPLETED] * 3
    assert sum(len(claims) for _, _, claims in calls) == 3
    assert reads and set(reads) == {"batching-serial"}
