"""How a worker batches: claims ride on the commits that end runs, and quick runs are
claimed a few ahead. On real SQLite and real PostgreSQL.

Neither may cost a guarantee: user code never runs more than ``concurrency`` at once,
runs held ready are handed back on shutdown with their attempt unspent, and a run
cancelled while held ready ends CANCELED without its code ever running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest

import outlast
from outlast import Worker, queue, task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import Claim, EndSegment, Op, StartDequeued, Store
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
            reserve: Any = None,
            scope: Any = None,
            offer: bool = False,
        ) -> tuple[list[bool], list[Claim]]:
            ok, claims = real(worker_id, ops, env, serves, limit, reserve, scope, offer)
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
    handles = client.batch_trigger(serial, list(range(6)))
    ids = [h.id for h in handles]
    worker, calls = workers(serial)
    await worker.run_until_idle()
    assert [client.retrieve(i).status for i in ids] == [RunStatus.COMPLETED] * 6

    def started_in_commit_ending(before: str, run_id: str) -> str | None:
        for ops, _, claims in calls:
            if not any(
                isinstance(op, EndSegment) and op.outcome == "completed" and op.run_id == before
                for op in ops
            ):
                continue
            if any(isinstance(op, StartDequeued) and op.run_id == run_id for op in ops):
                return "handed over"
            if any(c.run.id == run_id and c.run.status == RunStatus.EXECUTING for c in claims):
                return "claimed"
        return None

    # The queue allows one at a time: runs 2-6 each started in the commit of the one
    # before, claimed there or (once the worker held it DEQUEUED) handed its slot.
    how = [started_in_commit_ending(a, b) for a, b in itertools.pairwise(ids)]
    assert None not in how, how
    assert "handed over" in how
    assert not list(worker._reserved.values())


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


async def test_a_run_ended_before_its_code_began_never_runs_it(
    client: Client, store: Store, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    """A cancel can reach a run between its launch and its asyncio task's first step (the
    beat that delivers it and the launch share the loop): the code must not begin, and
    the run ends CANCELED."""
    handle = client.trigger(blocked, 7)
    worker, _ = workers(blocked, concurrency=1, prefetch=0)
    await worker.start(background=False)
    [claim] = await asyncio.to_thread(store.claim, worker.id, "dev", worker._queues_served(), 1)
    client.cancel(handle.id)  # executing: the request waits for the worker
    worker._launch(claim)
    worker.active[handle.id].end("cancel")  # as the beat does, before the task has run
    deadline = time.monotonic() + 30  # by the clock, not a count of polls: CI is loaded
    while worker.active and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await worker.committer.flush()
    assert STARTED == []
    assert client.retrieve(handle.id).status == RunStatus.CANCELED
    await worker.shutdown()


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
    real = store._commit_transaction  # type: ignore[attr-defined]

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

    store._commit_transaction = spying  # type: ignore[attr-defined]
    handles = client.batch_trigger(serial, list(range(3)))
    worker, calls = workers(quick, serial, blocked)
    await worker.run_until_idle()
    assert [client.retrieve(h.id).status for h in handles] == [RunStatus.COMPLETED] * 3
    assert sum(len(claims) for _, _, claims in calls) == 3
    assert reads and set(reads) == {"batching-serial"}


# -- hand-over: runs held DEQUEUED start in the slot a run of their key leaves ---------------

SEEN_AT_START: list[RunStatus] = []


@task(id="batching-serial-timed", queue=queue("batching-serial-timed", concurrency_limit=1))
async def serial_timed(n: int) -> int:
    RUNNING["now"] += 1
    RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    SEEN_AT_START.append(Client(store=HANDOVER_STORE[0], env="dev").retrieve(
        outlast.current_run().id).status)
    await asyncio.sleep(0.003)
    RUNNING["now"] -= 1
    return n


@task(id="batching-pair", queue=queue("batching-pair", concurrency_limit=2))
async def pair(n: int) -> int:
    STARTED.append(n)
    if n:
        await GATE.setdefault("open", asyncio.Event()).wait()
    return n


HANDOVER_STORE: list[Store] = []


async def test_the_next_run_starts_in_the_slot_before_its_predecessors_end_commits(
    client: Client, store: Store, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    HANDOVER_STORE[:] = [store]
    SEEN_AT_START.clear()
    ids = [h.id for h in client.batch_trigger(serial_timed, list(range(40)))]
    worker, calls = workers(serial_timed)
    executing_after: list[int] = []
    real = store.apply_and_claim

    def counting(*args: Any, **kwargs: Any) -> tuple[list[bool], list[Claim]]:
        out = real(*args, **kwargs)
        executing_after.append(
            len(store.list_runs("dev", status=["EXECUTING"], queue="batching-serial-timed"))
        )
        return out

    store.apply_and_claim = counting  # type: ignore[method-assign]
    await worker.run_until_idle()
    runs = [client.retrieve(i) for i in ids]
    assert [r.status for r in runs] == [RunStatus.COMPLETED] * 40
    assert [r.attempt for r in runs] == [1] * 40
    # Code of runs of a limit-1 queue never overlapped, and no commit left two EXECUTING.
    assert RUNNING["max"] == 1
    assert max(executing_after) <= 1
    # Most runs were handed their predecessor's slot: their start committed with its end.
    # Many of them had their code running while the database still had them DEQUEUED,
    # that is, before that commit (the rest read their status after it).
    handed = [op for ops, _, _ in calls for op in ops if isinstance(op, StartDequeued)]
    assert len(handed) >= 15
    assert 10 <= SEEN_AT_START.count(RunStatus.DEQUEUED) <= len(handed), SEEN_AT_START
    # Every slot came back: the transfer never leaked or double-counted one.
    (q,) = [q for q in store.list_queues("dev") if q["name"] == "batching-serial-timed"]
    assert q["executing"] == 0 and all(n == 0 for n in q["keys"].values())


async def _hold_dequeued(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> tuple[Worker, list[str]]:
    """Queue limit 2: run 0 ends at once, runs 1 and 2 block, run 3 is held DEQUEUED."""
    ids = [h.id for h in client.batch_trigger(pair, list(range(6)))]
    worker, _ = workers(pair, concurrency=5, prefetch=0)
    await worker.start(background=False)
    worker._avg_seconds = 0.001  # as if recent runs were short: hold successors
    await worker._claim()
    for _ in range(50):
        await asyncio.sleep(0)
    await worker.committer.flush()
    assert sorted(STARTED) == [0, 1, 2]
    statuses = [client.retrieve(i).status for i in ids]
    assert statuses == [RunStatus.COMPLETED, RunStatus.EXECUTING, RunStatus.EXECUTING,
                        RunStatus.DEQUEUED, RunStatus.QUEUED, RunStatus.QUEUED]
    assert [c.run.id for held in worker._reserved.values() for c in held] == [ids[3]]
    return worker, ids


async def test_dequeued_runs_go_back_on_shutdown_to_their_place_attempt_unspent(
    client: Client,
    store: Store,
    clock: FakeClock,
    workers: Callable[..., tuple[Worker, Calls]],
) -> None:
    worker, ids = await _hold_dequeued(client, workers)
    queued_at = client.retrieve(ids[3]).available_at
    clock.advance(10)
    await worker.shutdown(grace=0)
    runs = [client.retrieve(i) for i in ids[1:]]
    assert [r.status for r in runs] == [RunStatus.QUEUED] * 5
    assert [r.attempt for r in runs] == [1] * 5
    assert runs[2].worker_id is None
    assert 3 not in STARTED
    (q,) = [q for q in store.list_queues("dev") if q["name"] == "batching-pair"]
    assert q["executing"] == 0
    # Run 3 kept its place among runs 4 and 5 (triggered with it: a tie), while runs 1
    # and 2, whose code had started, went to the back.
    assert runs[2].available_at == queued_at
    assert runs[0].available_at == runs[1].available_at == queued_at + 10
    GATE.setdefault("open", asyncio.Event()).set()
    STARTED.clear()
    later, _ = workers(pair, concurrency=1, prefetch=0)
    await later.run_until_idle()
    assert sorted(STARTED[:3]) == [3, 4, 5] and sorted(STARTED[3:]) == [1, 2]


async def test_a_dequeued_run_cancelled_never_starts(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    worker, ids = await _hold_dequeued(client, workers)
    client.cancel(ids[3])
    await worker.beat()
    await worker.committer.flush()
    assert client.retrieve(ids[3]).status == RunStatus.CANCELED
    assert not worker._reserved
    GATE["open"].set()
    await worker.run_until_idle()
    assert [client.retrieve(i).status for i in ids] == [
        RunStatus.COMPLETED, RunStatus.COMPLETED, RunStatus.COMPLETED,
        RunStatus.CANCELED, RunStatus.COMPLETED, RunStatus.COMPLETED,
    ]
    assert 3 not in STARTED


async def test_a_paused_queue_gets_its_dequeued_runs_back_at_the_next_beat(
    client: Client, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    """Held DEQUEUED, run 3 would start when run 1 or 2 ends, however long after a pause
    that is; the beat after the pause hands it back to its place, attempt unspent, and
    nothing of the queue starts until it is resumed."""
    worker, ids = await _hold_dequeued(client, workers)
    queued_at = client.retrieve(ids[3]).available_at
    client.pause_queue("batching-pair")
    await worker.beat()
    await worker.committer.flush()
    held = client.retrieve(ids[3])
    assert held.status == RunStatus.QUEUED and held.worker_id is None
    assert held.available_at == queued_at and held.attempt == 1
    assert not worker._reserved
    GATE["open"].set()
    await worker.run_until_idle()  # runs 1 and 2 end; the paused queue starts nothing
    assert [client.retrieve(i).status for i in ids] == [RunStatus.COMPLETED] * 3 + [
        RunStatus.QUEUED] * 3
    assert sorted(STARTED) == [0, 1, 2]
    client.resume_queue("batching-pair")
    await worker.run_until_idle()
    assert [client.retrieve(i).status for i in ids] == [RunStatus.COMPLETED] * 6
    await worker.shutdown()


async def test_ops_of_a_dequeued_run_are_refused_until_a_hand_over_starts_it(
    client: Client, store: Store, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    worker, _ = await _hold_dequeued(client, workers)
    (held,) = [c for q in worker._reserved.values() for c in q]
    done = EndSegment(run_id=held.run.id, epoch=held.epoch, outcome="completed", output="3")
    assert store.apply(worker.id, [done]) == [False]  # never started: no end of it
    assert client.retrieve(held.run.id).status == RunStatus.DEQUEUED
    start = StartDequeued(run_id=held.run.id, epoch=held.epoch)
    stale = StartDequeued(run_id=held.run.id, epoch=held.epoch - 1)
    assert store.apply(worker.id, [stale]) == [False]  # a fenced epoch starts nothing
    assert store.apply("worker_other", [start]) == [False]  # nor another worker
    assert store.apply(worker.id, [start, done]) == [True, True]  # started, then ended
    assert client.retrieve(held.run.id).status == RunStatus.COMPLETED
    assert store.apply(worker.id, [start]) == [False]  # a replayed start does nothing
    worker._reserved.clear()
    GATE.setdefault("open", asyncio.Event()).set()
    await worker.run_until_idle()
    (q,) = [q for q in store.list_queues("dev") if q["name"] == "batching-pair"]
    assert q["executing"] == 0  # the start took a slot, the end gave it back


async def test_no_runs_are_held_for_a_key_over_a_lowered_limit(
    client: Client, store: Store, workers: Callable[..., tuple[Worker, Calls]]
) -> None:
    worker, _ = await _hold_dequeued(client, workers)
    serves = {"batching-pair": [pair.id]}
    key = ("batching-pair", "")
    # Full (2 of 2): one more can be held.
    _, got = store.apply_and_claim(worker.id, [], "dev", serves, 0, {key: 1})
    assert [c.run.status for c in got] == [RunStatus.DEQUEUED]
    store.update_queue("dev", "batching-pair", concurrency_limit=1)
    # Over the new limit (2 of 1): nothing is held, so the key drains to its limit.
    _, got = store.apply_and_claim(worker.id, [], "dev", serves, 0, {key: 1})
    assert got == []
    for c in got:
        worker.claimed([c], 0)
    GATE["open"].set()
    await worker.shutdown(grace=0)
