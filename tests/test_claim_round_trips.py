"""PostgreSQL: a worker's commit batch in pipeline mode, counted in server round trips.

On a busy machine each round trip is a wake-up of the worker's thread and of the server's
process, which is most of an idle claim's time (trigger→start latency). The counts come
from libpq's protocol trace: every time the client asks for results (a simple Query, a
Sync, or a Flush) it then waits for them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.pq import Trace, TransactionStatus

from outlast import queue, task
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import Store
from outlast.store.base import WorkerInfo


@task(id="rt-noop", queue=queue("rt-queue"))
async def noop(payload: Any) -> None:
    return None


SERVES = {"rt-queue": [noop.id]}


@pytest.fixture
def backend() -> str:
    return "postgres"


@contextlib.contextmanager
def traced(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The frontend messages of every pooled connection the block uses, in order."""
    pool: Any = store._pool  # type: ignore[attr-defined]
    real = pool.connection
    messages: list[str] = []
    trace = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed below, after reading)

    @contextlib.contextmanager
    def connection(*args: Any, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
        with real(*args, **kwargs) as conn:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
            try:
                yield conn
            finally:
                conn.pgconn.untrace()

    monkeypatch.setattr(pool, "connection", connection)
    try:
        yield messages
    finally:
        monkeypatch.setattr(pool, "connection", real)
        trace.seek(0)
        messages.extend(line.split("\t")[2].strip() for line in trace.read().splitlines()
                        if line.startswith("F\t"))
        trace.close()


def waits(messages: list[str]) -> int:
    """Round trips: requests for results (a Flush right after a Sync is the same one)."""
    n = 0
    for i, m in enumerate(messages):
        if m in ("Query", "Sync") or (m == "Flush" and (i == 0 or messages[i - 1] != "Sync")):
            n += 1
    return n


def _register(store: Store, worker_id: str) -> None:
    store.register_worker(WorkerInfo(id=worker_id, env="dev", host="test", pid=1,
                                     concurrency=10, tasks=[noop.id], lease_seconds=30.0))


def test_an_idle_claim_takes_three_round_trips(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BEGIN, the worker check, the queue locks and the open slots; the claim; the slots
    # taken with COMMIT: seven round trips one by one, three in pipeline mode.
    handle = client.trigger(noop, 1)
    _register(store, "w_rt")
    with traced(store, monkeypatch) as messages:
        _ok, claims = store.apply_and_claim("w_rt", [], "dev", SERVES, 1)
    assert [c.run.id for c in claims] == [handle.id]
    assert waits(messages) == 3, messages
    assert client.retrieve(handle.id).status == RunStatus.EXECUTING  # committed


def test_a_worker_that_may_not_claim_locks_and_takes_nothing(store: Store, client: Client
                                                             ) -> None:
    # The worker check is sent with the queue locks, before its answer is known: the
    # answer still decides, and the transaction commits having taken nothing.
    handle = client.trigger(noop, 1)
    _ok, claims = store.apply_and_claim("w_unknown", [], "dev", SERVES, 1)
    assert claims == []
    _register(store, "w_known")
    _ok, claims = store.apply_and_claim("w_known", [], "dev", SERVES, 1)
    assert [c.run.id for c in claims] == [handle.id]


def test_a_statement_failing_unread_rolls_the_whole_batch_back(store: Store, client: Client
                                                               ) -> None:
    # A statement sent without waiting fails where the batch next waits (here, at COMMIT):
    # the error reaches the caller, nothing of the batch is written, and the pooled
    # connection goes back idle, fit for the next batch.
    handle = client.trigger(noop, 1)
    _register(store, "w_rt")
    with pytest.raises(psycopg.errors.DivisionByZero), \
            store._commit_transaction() as tx:  # type: ignore[attr-defined]
        tx.conn.execute("UPDATE runs SET status = 'CANCELED' WHERE id = %s", (handle.id,))
        tx.conn.execute("SELECT 1 / 0")
    assert client.retrieve(handle.id).status == RunStatus.QUEUED
    pool: Any = store._pool  # type: ignore[attr-defined]
    with pool.connection() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
    _ok, claims = store.apply_and_claim("w_rt", [], "dev", SERVES, 1)
    assert [c.run.id for c in claims] == [handle.id]


def test_an_error_raised_by_the_caller_rolls_back(store: Store, client: Client) -> None:
    handle = client.trigger(noop, 1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store._commit_transaction() as tx:  # type: ignore[attr-defined]
        tx.conn.execute("UPDATE runs SET status = 'CANCELED' WHERE id = %s", (handle.id,))
        raise Boom
    assert client.retrieve(handle.id).status == RunStatus.QUEUED


@task(id="rt-limited", queue=queue("rt-limited", concurrency_limit=1))
async def limited(payload: Any) -> None:
    return None


def test_open_slots_are_read_ahead_for_the_queues_with_work(
    store: Store, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker serving more queues than are read ahead still claims in three round trips
    # when few of them have work; a queue whose slots are full is read ahead as having
    # no room (not as "not read"), and gives nothing.
    empty = [queue(f"rt-empty-{i}") for i in range(6)]
    store.declare_queues("dev", [noop.queue.spec(), limited.queue.spec(),
                                 *(q.spec() for q in empty)])
    serves = {**SERVES, limited.queue.name: [limited.id], **{q.name: [noop.id] for q in empty}}
    first, second = client.trigger(limited, 1), client.trigger(limited, 2)
    _register(store, "w_rt")
    with traced(store, monkeypatch) as messages:
        _ok, claims = store.apply_and_claim("w_rt", [], "dev", serves, 10)
    assert [c.run.id for c in claims] == [first.id]
    assert waits(messages) == 3, messages
    plain = client.trigger(noop, 1)
    with traced(store, monkeypatch) as messages:
        _ok, claims = store.apply_and_claim("w_rt", [], "dev", serves, 10)
    assert [c.run.id for c in claims] == [plain.id]
    assert waits(messages) == 3, messages
    assert client.retrieve(second.id).status == RunStatus.QUEUED
