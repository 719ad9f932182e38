"""Waitpoints on both backends: durable sleeps, tokens, timers fired from the store.

A wait that is not yet satisfied suspends the run: WAITING, no worker, no queue slot, no
memory. Timers fire from the store's tick however many processes tick at once, and a
token resumes its run once: the first completion wins, later ones are answered
idempotently (C7).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import outlast
from outlast import Worker, explain, metadata, step, task, wait
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store.base import EndSegment, Op, StartWait, Store, WorkerInfo
from tests.conftest import ROOT

CALLS: dict[str, int] = {}


def _count(name: str) -> int:
    CALLS[name] = CALLS.get(name, 0) + 1
    return CALLS[name]


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@task(id="orch-wp-day-sleep")
async def day_sleep(payload: dict[str, int]) -> dict[str, Any]:
    before = await step.run("before", _count, "before")
    await wait.sleep(timedelta(days=1))
    after = await step.run("after", _count, "after")
    return {"before": before, "after": after, "x": payload["x"]}


@task(id="orch-wp-until")
async def until_task(payload: dict[str, float]) -> str:
    await wait.until(datetime.fromtimestamp(payload["at"], UTC))
    return "woke"


@task(id="orch-wp-short-sleep")
async def short_sleep(payload: None) -> str:
    await wait.sleep(0.05)
    await wait.sleep(timedelta(milliseconds=20))
    return "done"


@task(id="orch-wp-token")
async def token_task(payload: dict[str, Any]) -> dict[str, Any]:
    token = await wait.create_token(
        timeout=payload.get("timeout"), tags=["orch"], idempotency_key=payload.get("key")
    )
    metadata.set("token", token.id)
    _count("waiting")
    result = await wait.for_token(token)
    return {
        "ok": result.ok,
        "output": result.output,
        "timed_out": result.timed_out,
        "token": token.id,
        "url": token.callback_url,
    }


@task(id="orch-wp-external-token")
async def external_token_task(payload: dict[str, str]) -> Any:
    result = await wait.for_token(payload["token"])
    return result.unwrap()


@task(id="orch-wp-unknown-token")
async def unknown_token_task(payload: None) -> str:
    try:
        await wait.for_token("waitpoint_doesnotexist")
    except outlast.TokenNotFound as exc:
        return f"not found: {exc.code}"
    return "found?"


@task(id="orch-wp-unknown-token-raises", retry=outlast.Retry(max_attempts=2, min_delay=0))
async def unknown_token_raises(payload: None) -> str:
    await wait.for_token("waitpoint_doesnotexist")
    return "found?"


TASKS = {
    t.id: t
    for t in (
        day_sleep,
        until_task,
        short_sleep,
        token_task,
        external_token_task,
        unknown_token_task,
        unknown_token_raises,
    )
}


def _worker(store: Store, **kw: Any) -> Worker:
    return Worker(store, tasks=TASKS, **kw)


def _executing(store: Store, queue: str) -> int:
    for q in store.list_queues("dev"):
        if q["name"] == queue:
            return int(q["executing"])
    raise AssertionError(f"no queue {queue}")


async def test_day_sleep_parks_the_run_and_resumes_from_the_store(
    store: Store, client: Client, clock: FakeClock
) -> None:
    handle = await day_sleep.trigger({"x": 7})
    worker = _worker(store)
    await worker.run_until_idle()

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.WAITING
    assert run.worker_id is None  # no worker holds it
    assert _executing(store, "task/orch-wp-day-sleep") == 0  # nor a queue slot
    assert worker.active == {}  # nor any memory in the worker
    assert "waiting on a sleep until" in explain.why(store, run)

    clock.advance(12 * 3600)  # half way: still parked
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING

    clock.advance(12 * 3600 + 1)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"before": 1, "after": 1, "x": 7}  # the step before ran once
    assert CALLS == {"before": 1, "after": 1}
    assert _executing(store, "task/orch-wp-day-sleep") == 0


async def test_wait_until_a_datetime(store: Store, client: Client, clock: FakeClock) -> None:
    handle = await until_task.trigger({"at": clock.now() + 3600})
    worker = _worker(store)
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(3599)
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(2)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "woke")


async def test_short_sleeps_are_served_in_place(store: Store, client: Client) -> None:
    handle = await short_sleep.trigger(None)
    worker = _worker(store)
    segments = await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "done")
    assert segments == 1  # never parked, so never replayed
    journal = store.journal(handle.id)
    assert [(j.kind, j.status) for j in journal] == [("sleep", "done"), ("sleep", "done")]


async def test_token_completed_by_the_client_resumes_the_run_with_its_data(
    store: Store, client: Client
) -> None:
    handle = await token_task.trigger({"timeout": 3600})
    worker = _worker(store)
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.WAITING
    token_id = run.metadata["token"]
    wp = client.get_token(token_id)
    assert (wp.status, wp.waiting_runs, wp.tags) == ("pending", [handle.id], ["orch"])
    assert f"token {token_id}" in explain.why(store, run)

    done = client.complete_token(token_id, {"approved": True, "by": "ada"})
    assert done.status == "completed"
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["ok"] is True
    assert run.output["output"] == {"approved": True, "by": "ada"}
    assert run.output["timed_out"] is False
    assert run.output["token"] == token_id  # the replay got the same token back
    assert f"/waitpoints/tokens/{token_id}/callback/" in run.output["url"]
    assert CALLS["waiting"] == 2  # the code before the wait replayed once, no more


async def test_complete_token_from_app_code_and_the_async_client(
    store: Store, client: Client
) -> None:
    token = client.create_token(timeout=timedelta(hours=1))
    handles = await external_token_task.batch_trigger([{"token": token.id}] * 2)
    worker = _worker(store)
    await worker.run_until_idle()
    assert {client.retrieve(h.id).status for h in handles} == {RunStatus.WAITING}
    assert sorted(client.get_token(token.id).waiting_runs) == sorted(h.id for h in handles)
    wp = outlast.complete_token(token.id, [1, 2, 3])  # the default client
    assert wp.output == [1, 2, 3]
    await worker.run_until_idle()
    await worker.shutdown()
    for h in handles:  # one token, two waiting runs: both resume with its data
        run = client.retrieve(h.id)
        assert (run.status, run.output) == (RunStatus.COMPLETED, [1, 2, 3])

    token2 = await outlast.AsyncClient(client).create_token(60)
    wp2 = await outlast.AsyncClient(client).complete_token(token2.id, "yes")
    assert (wp2.status, wp2.output) == ("completed", "yes")


async def test_token_already_completed_before_the_wait_returns_at_once(
    store: Store, client: Client
) -> None:
    token = client.create_token()
    client.complete_token(token.id, {"early": 1})
    handle = await external_token_task.trigger({"token": token.id})
    worker = _worker(store)
    segments = await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"early": 1})
    assert segments == 1


async def test_token_timeout_gives_a_timed_out_result(
    store: Store, client: Client, clock: FakeClock
) -> None:
    handle = await token_task.trigger({"timeout": 60})
    worker = _worker(store)
    await worker.run_until_idle()
    token_id = client.retrieve(handle.id).metadata["token"]
    clock.advance(61)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["ok"] is False
    assert run.output["timed_out"] is True
    assert client.get_token(token_id).status == "timed_out"
    # Completing it now is a clear error, and changes nothing.
    with pytest.raises(outlast.TokenTimedOut):
        client.complete_token(token_id, "too late")
    assert client.get_token(token_id).status == "timed_out"


async def test_completing_a_token_past_its_timeout_before_any_tick_times_it_out(
    store: Store, client: Client, clock: FakeClock
) -> None:
    handle = await token_task.trigger({"timeout": 60})
    worker = _worker(store, scheduler=False)  # nothing ticks: the timer never fires
    await worker.run_until_idle()
    token_id = client.retrieve(handle.id).metadata["token"]
    clock.advance(61)
    with pytest.raises(outlast.TokenTimedOut):
        client.complete_token(token_id, "too late")
    assert client.get_token(token_id).status == "timed_out"  # the timeout won, and stuck
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert (run.output["ok"], run.output["timed_out"]) == (False, True)


async def test_token_completed_twice_first_wins_second_is_idempotent(
    store: Store, client: Client
) -> None:
    handle = await token_task.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    token_id = client.retrieve(handle.id).metadata["token"]

    first = client.complete_token(token_id, "first")
    second = client.complete_token(token_id, "second")
    assert (first.status, first.output) == ("completed", "first")
    assert (second.status, second.output) == ("completed", "first")  # answered, unchanged
    assert first.completed_at == second.completed_at

    segments = await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.output["output"] == "first"
    assert segments == 1  # resumed once (C7)


async def test_concurrent_completions_resume_the_run_once(
    store: Store, client: Client, db_url: str, clock: FakeClock
) -> None:
    handle = await token_task.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    token_id = client.retrieve(handle.id).metadata["token"]

    stores = [open_store(db_url, clock) for _ in range(4)]
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def complete(s: Store, i: int) -> None:
        barrier.wait()
        _, done = s.complete_waitpoint("dev", token_id, f'"from {i}"')
        results.append(done)

    threads = [threading.Thread(target=complete, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(results) == [False, False, False, True]
    winner = client.get_token(token_id).output
    assert await worker.run_until_idle() == 1
    await worker.shutdown()
    assert client.retrieve(handle.id).output["output"] == winner


async def test_unknown_token_is_a_clear_error(store: Store, client: Client) -> None:
    with pytest.raises(outlast.TokenNotFound) as err:
        client.complete_token("waitpoint_nosuchtoken", 1)
    assert "waitpoint_nosuchtoken" in str(err.value)
    with pytest.raises(outlast.TokenNotFound):
        client.get_token("waitpoint_nosuchtoken")

    handle = await unknown_token_task.trigger(None)
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "not found: token_not_found")


async def test_waiting_on_an_unknown_token_fails_the_run_clearly(
    store: Store, client: Client
) -> None:
    """Every attempt meets the same clear error; none parks on a token that never comes."""
    handle = await unknown_token_raises.trigger(None)
    worker = _worker(store)
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.FAILED
    assert run.attempt == 2
    assert run.error is not None
    assert run.error["code"] == "token_not_found"
    assert "waitpoint_doesnotexist" in run.error["message"]


async def test_token_idempotency_key_returns_the_same_token(client: Client) -> None:
    a = client.create_token(timeout=60, idempotency_key="approval-42")
    b = client.create_token(timeout=60, idempotency_key="approval-42")
    c = client.create_token(timeout=60, idempotency_key="approval-43")
    assert a.id == b.id != c.id


async def test_timers_fire_once_however_many_processes_tick(
    store: Store, client: Client, db_url: str, clock: FakeClock
) -> None:
    handles = await day_sleep.batch_trigger([{"x": i} for i in range(40)])
    worker = _worker(store, concurrency=40)
    await worker.run_until_idle()
    assert {client.retrieve(h.id).status for h in handles} == {RunStatus.WAITING}
    clock.advance(86401)
    store.heartbeat(worker.id, worker.lease_seconds)  # the fake day must not reap it

    stores = [open_store(db_url, clock) for _ in range(4)]
    fired: list[int] = []
    barrier = threading.Barrier(len(stores))

    def tick(s: Store) -> None:
        barrier.wait()
        fired.append(s.tick().fired_timers)

    threads = [threading.Thread(target=tick, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sum(fired) == 40  # each timer fired exactly once
    assert await worker.run_until_idle() == 40  # each run resumed exactly once
    await worker.shutdown()
    assert {client.retrieve(h.id).status for h in handles} == {RunStatus.COMPLETED}
    assert CALLS == {"before": 40, "after": 40}


def test_cli_tokens_complete(store: Store, client: Client, db_url: str) -> None:
    token = client.create_token(timeout=3600)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outlast", "tokens", *args, "--database-url", db_url],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )

    done = cli("complete", token.id, "--data", '{"approved": true}')
    assert done.returncode == 0, done.stderr
    assert f"{token.id} completed" in done.stdout
    again = cli("complete", token.id, "--data", '{"approved": false}')
    assert again.returncode == 0, again.stderr  # idempotent
    assert client.get_token(token.id).output == {"approved": True}
    missing = cli("complete", "waitpoint_nosuchtoken")
    assert missing.returncode == 2
    assert "token_not_found" in missing.stderr


_SOAK = pytest.mark.skipif("'soak' not in config.getoption('markexpr')", reason="run with -m soak")


# 5,000 parked runs by default: a Python object kept per run shows in the object count
# (limit 2,000), and 2 KB per run in resident memory; the soak's 100,000 looks closer. The
# timeout is the default suite's under load (the other process of the suite runs beside it).
@pytest.mark.timeout(360)
@pytest.mark.parametrize(
    ("warm", "parked"),
    [(1_000, 5_000), pytest.param(20_000, 100_000, marks=[pytest.mark.soak, _SOAK])],
)
async def test_parked_runs_hold_no_worker_memory(
    store: Store, client: Client, clock: FakeClock, warm: int, parked: int
) -> None:
    """Runs parked on day-long sleeps (5,000 by default, 100,000 with -m soak) leave the
    worker's memory where it was: no Python objects kept per run, and resident memory
    flat once the allocator has handed back what it holds free (glibc ``malloc_trim``)."""
    worker = _worker(store, concurrency=500)

    async def park(first: int, n: int) -> None:
        for start in range(first, first + n, 10_000):
            stop = min(start + 10_000, first + n)
            await day_sleep.batch_trigger([{"x": i} for i in range(start, stop)])
            await worker.run_until_idle(max_seconds=900)

    await park(0, warm)  # warm up: code paths, caches, connection pools, the allocator
    before, objects_before = _memory()
    await park(warm, parked)
    after, objects_after = _memory()
    await worker.shutdown()
    assert store.count_runs("dev")["orch-wp-day-sleep"] == {"WAITING": warm + parked}
    assert worker.active == {}
    print(
        f"worker RSS {before:.1f} MB with {warm:,} parked runs, {after:.1f} MB with "
        f"{warm + parked:,}; Python objects {objects_before} -> {objects_after}"
    )
    assert objects_after - objects_before < 2_000  # nothing kept per run
    # Under 3 KB per parked run: the allocator's own drift is a few MB (10.1 MB seen once
    # beside the suite's other process); state kept per run shows in the object count.
    assert after - before < parked * 3e-3, f"worker RSS grew {after - before:.1f} MB"


def _memory() -> tuple[float, int]:
    """Resident MB after a full collection and trimming free heap; live Python objects."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6, len(gc.get_objects())


@task(id="orch-wp-parked-in-one-batch", queue=outlast.queue("wp-batch", concurrency_limit=3))
async def parked_in_batch(payload: None) -> None:
    return None


async def test_runs_parked_in_one_batch_each_resume_once(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """Waits and suspends of many runs committed in one batch each (PostgreSQL writes each
    kind in one statement): slots come back (C5), a wait satisfied before its suspend
    replays at once, and a timer resumes its run exactly once (C7)."""
    handles = client.batch_trigger(parked_in_batch, [None] * 4)
    store.declare_queues("dev", [parked_in_batch.queue.spec()])
    store.register_worker(
        WorkerInfo(id="w1", env="dev", host="test", pid=1, concurrency=6,
                   tasks=[parked_in_batch.id], lease_seconds=3600.0)
    )
    serves = {"wp-batch": [parked_in_batch.id]}
    claims = store.claim("w1", "dev", serves, 6)
    assert len(claims) == 3  # the key's limit: one run left queued
    assert _executing(store, "wp-batch") == 3
    token = store.create_token("dev", "waitpoint_batch_token", timeout_at=None)
    now = clock.now()
    due = now + 60
    sleepers, waiter = claims[:2], claims[2]
    waits: list[StartWait] = [
        StartWait(run_id=c.run.id, epoch=c.epoch, key="nap", kind="sleep", fingerprint="fp",
                  attempt=1, started_at=now, waitpoint_id=f"waitpoint_nap_{c.run.id}",
                  new_waitpoint_kind="sleep", timeout_at=due)
        for c in sleepers
    ]
    waits.append(StartWait(run_id=waiter.run.id, epoch=waiter.epoch, key="tok", kind="token",
                           fingerprint="fp", attempt=1, started_at=now,
                           waitpoint_id=token.id))
    assert store.apply("w1", waits) == [True] * 3
    assert {e.key: e.status for c in claims for e in store.journal(c.run.id)} == {
        "nap": "waiting", "tok": "waiting"
    }
    # Completed between the wait's registration and the run's suspend.
    store.complete_waitpoint("dev", token.id, '"ok"')
    suspends: list[Op] = [
        EndSegment(run_id=c.run.id, epoch=c.epoch, outcome="suspend", exec_seconds=0.5,
                   wait_on=[w.waitpoint_id or ""], wait_reason='{"w": 1}')
        for c, w in zip(claims, waits, strict=True)
    ]
    assert store.apply("w1", suspends) == [True] * 3
    assert _executing(store, "wp-batch") == 0
    statuses = {h.id: client.retrieve(h.id).status for h in handles}
    assert [statuses[c.run.id] for c in claims] == [
        RunStatus.WAITING, RunStatus.WAITING, RunStatus.QUEUED
    ]
    for c in sleepers:
        assert store.get_waitpoint("dev", f"waitpoint_nap_{c.run.id}").waiting_runs == [  # type: ignore[union-attr]
            c.run.id
        ]
    # Nothing fires early; at the due moment each timer fires once, whoever ticks.
    assert store.tick().fired_timers == 0
    clock.advance(61)
    store.heartbeat("w1", 3600.0)
    assert store.tick().fired_timers == 2
    assert store.tick().fired_timers == 0
    assert {client.retrieve(c.run.id).status for c in sleepers} == {RunStatus.QUEUED}
    # The token's entry stays waiting (completed before its run waited on it): a replay
    # reads the waitpoint itself.
    assert {e.key: e.status for c in claims for e in store.journal(c.run.id)} == {
        "nap": "done", "tok": "waiting"
    }
    for c in sleepers:
        assert store.get_waitpoint("dev", f"waitpoint_nap_{c.run.id}").waiting_runs == []  # type: ignore[union-attr]
    # The run never claimed first (it was ready before them), then the three come back
    # as replays (a second lease epoch) with their waits satisfied, under the limit.
    again = store.claim("w1", "dev", serves, 6)
    assert len(again) == 3 and _executing(store, "wp-batch") == 3
    fresh = [c for c in again if c.epoch == 1]
    first = {c.run.id for c in claims}
    assert [c.run.id for c in fresh] == [h.id for h in handles if h.id not in first]
    done = EndSegment(run_id=fresh[0].run.id, epoch=1, outcome="completed", output="null")
    assert store.apply("w1", [done]) == [True]
    again += store.claim("w1", "dev", serves, 6)
    replays = [c for c in again if c.epoch == 2]
    assert sorted(c.run.id for c in replays) == sorted(c.run.id for c in claims)
    assert {s.status for c in replays for s in c.waitpoints.values()} == {"completed"}
    assert _executing(store, "wp-batch") == 3


def test_a_token_completed_while_its_run_suspends_still_resumes_it(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """The suspend reads its waitpoint while a completion of it is in flight in another
    transaction: whichever commits first, the run ends up queued to replay, never parked
    on a waitpoint that is already complete (C7). PostgreSQL only: SQLite's writers take
    turns on the file lock, so the two cannot overlap there."""
    if store.backend != "postgres":
        pytest.skip("a race between two PostgreSQL transactions")
    import psycopg

    (handle,) = client.batch_trigger(parked_in_batch, [None])
    store.declare_queues("dev", [parked_in_batch.queue.spec()])
    store.register_worker(
        WorkerInfo(id="w1", env="dev", host="test", pid=1, concurrency=1,
                   tasks=[parked_in_batch.id], lease_seconds=3600.0)
    )
    (claim,) = store.claim("w1", "dev", {"wp-batch": [parked_in_batch.id]}, 1)
    token = store.create_token("dev", "waitpoint_race_token", timeout_at=None)
    wait_op = StartWait(run_id=claim.run.id, epoch=claim.epoch, key="tok", kind="token",
                        fingerprint="fp", attempt=1, started_at=clock.now(),
                        waitpoint_id=token.id)
    assert store.apply("w1", [wait_op]) == [True]
    suspend = EndSegment(run_id=claim.run.id, epoch=claim.epoch, outcome="suspend",
                         exec_seconds=0.1, wait_on=[token.id], wait_reason="{}")
    suspended, release = threading.Event(), threading.Event()

    def suspend_and_hold() -> None:
        # The batch's suspend written, its commit held back until the completion runs.
        with store._transaction() as tx:  # type: ignore[attr-defined]
            store._suspend_runs(tx, [suspend], clock.now())  # type: ignore[attr-defined]
            suspended.set()
            release.wait(10)

    holder = threading.Thread(target=suspend_and_hold)
    holder.start()
    assert suspended.wait(10)
    completer = threading.Thread(
        target=store.complete_waitpoint, args=("dev", token.id, '"ok"')
    )
    completer.start()
    # Let the completion run into the suspend's lock (or, without one, finish).
    url = store.url
    with psycopg.connect(url, autocommit=True) as watch:
        for _ in range(200):
            waiting = watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            row = waiting.fetchone()
            if (row and row[0]) or not completer.is_alive():
                break
            completer.join(0.01)
    release.set()
    holder.join(10)
    completer.join(10)
    assert client.retrieve(handle.id).status == RunStatus.QUEUED


def test_a_sleep_firing_while_its_run_suspends_still_resumes_it(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """A tick fires sleeps while their runs suspend on them, over and over: each run ends
    up queued, never WAITING on a sleep that already fired (C7, C10). PostgreSQL fired
    timers in one statement whose snapshot, taken before a suspend committed, hid the
    suspend's run_waits row once it locked the waitpoint after that commit: about one
    run in a hundred here, 50 in the 100,000-run soak. A race between two PostgreSQL
    transactions (SQLite's writers take turns), so it is run many times."""
    if store.backend != "postgres":
        pytest.skip("a race between two PostgreSQL transactions")
    from tests.faults.invariant import waiting_on_nothing

    n = 300
    client.batch_trigger(parked_in_batch, [None] * n)
    store.declare_queues("dev", [outlast.queue("wp-batch", concurrency_limit=n).spec()])
    store.register_worker(
        WorkerInfo(id="w1", env="dev", host="test", pid=1, concurrency=n,
                   tasks=[parked_in_batch.id], lease_seconds=3600.0)
    )
    claims = store.claim("w1", "dev", {"wp-batch": [parked_in_batch.id]}, n)
    assert len(claims) == n
    ticker_store = open_store(store.url, clock)
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticker_store.tick()

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        for c in claims:
            wp = f"waitpoint_nap_{c.run.id}"
            nap = StartWait(run_id=c.run.id, epoch=c.epoch, key="nap", kind="sleep",
                            fingerprint="fp", attempt=1, started_at=clock.now(),
                            waitpoint_id=wp, new_waitpoint_kind="sleep",
                            timeout_at=clock.now() + 1)
            assert store.apply("w1", [nap]) == [True]
            clock.advance(1)  # due now: the ticker fires it as the run suspends
            suspend = EndSegment(run_id=c.run.id, epoch=c.epoch, outcome="suspend",
                                 exec_seconds=0.1, wait_on=[wp], wait_reason="{}")
            assert store.apply("w1", [suspend]) == [True]
    finally:
        stop.set()
        ticker.join(30)
        ticker_store.close()
    store.tick()
    assert waiting_on_nothing(store.url) == []
    assert store.count_runs("dev")[parked_in_batch.id] == {"QUEUED": n}


def test_the_liveness_check_sees_runs_parked_for_good(
    store: Store, client: Client, clock: FakeClock
) -> None:
    """tests/faults' invariant fails on a WAITING run nothing will resume (its waitpoint
    already fired, or no waitpoint at all) and passes one parked on a pending sleep: the
    soak's 50 stuck runs named their sleeps, which the "cannot say why" check took as an
    explanation."""
    from tests.faults.invariant import waiting_on_nothing

    client.batch_trigger(parked_in_batch, [None] * 3)
    store.declare_queues("dev", [parked_in_batch.queue.spec()])
    store.register_worker(
        WorkerInfo(id="w1", env="dev", host="test", pid=1, concurrency=3,
                   tasks=[parked_in_batch.id], lease_seconds=3600.0)
    )
    claims = store.claim("w1", "dev", {"wp-batch": [parked_in_batch.id]}, 3)
    ops: list[Op] = []
    for c in claims:
        wp = f"waitpoint_nap_{c.run.id}"
        ops.append(StartWait(run_id=c.run.id, epoch=c.epoch, key="nap", kind="sleep",
                             fingerprint="fp", attempt=1, started_at=clock.now(),
                             waitpoint_id=wp, new_waitpoint_kind="sleep",
                             timeout_at=clock.now() + 60))
        ops.append(EndSegment(run_id=c.run.id, epoch=c.epoch, outcome="suspend",
                              exec_seconds=0.1, wait_on=[wp], wait_reason="{}"))
    assert store.apply("w1", ops) == [True] * 6
    url = store.url
    assert waiting_on_nothing(url) == []
    fired, bare, fine = (c.run.id for c in claims)
    with store._transaction() as tx:  # type: ignore[attr-defined]
        # The states the fixed races left: a sleep fired without resuming its run, and
        # a run parked with its waits gone.
        store._raw(tx, "UPDATE waitpoints SET status = 'completed' WHERE id = :id",  # type: ignore[attr-defined]
                   {"id": f"waitpoint_nap_{fired}"})
        store._raw(tx, "DELETE FROM run_waits WHERE run_id = :id", {"id": bare})  # type: ignore[attr-defined]
    assert sorted(r["id"] for r in waiting_on_nothing(url)) == sorted([fired, bare])
    assert fine not in {r["id"] for r in waiting_on_nothing(url)}
