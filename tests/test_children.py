"""Child runs on both backends: trigger and wait, batches, fire-and-forget, parallel waits.

A parent waiting on children holds no worker; children record parent, root and depth; a
trigger inside a task is journaled so a replay never triggers twice; cancelling a parent
cancels its waiting children; ``asyncio.gather`` over any mix of durable calls replays
deterministically, including after the worker is killed mid-way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outlast import AbortRun, Retry, Worker, current_run, explain, metadata, step, task, wait
from outlast._clock import FakeClock
from outlast.client import Client, set_default_client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from outlast.testing import OutlastEnv
from tests.apps import orchestration_app as app
from tests.conftest import spawn_worker

CALLS: dict[str, int] = {}


def _count(name: str) -> int:
    CALLS[name] = CALLS.get(name, 0) + 1
    return CALLS[name]


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@task(id="orch-ch-leaf", retry=Retry(max_attempts=1))
async def leaf(p: dict[str, Any]) -> dict[str, Any]:
    if p.get("fail"):
        raise AbortRun(f"leaf {p['n']} refused")
    if p.get("sleep"):
        await wait.sleep(p["sleep"])
    run = current_run()
    return {"n": p["n"], "parent": run.parent_id, "root": run.root_id, "depth": run.depth}


@task(id="orch-ch-middle")
async def middle(p: dict[str, Any]) -> dict[str, Any]:
    r = await leaf.trigger_and_wait({"n": p["n"]})
    return {"leaf": r.output, "me": current_run().id}


@task(id="orch-ch-top")
async def top(p: dict[str, Any]) -> dict[str, Any]:
    ok = await leaf.trigger_and_wait({"n": 1})
    bad = await leaf.trigger_and_wait({"n": 2, "fail": True})
    deep = await middle.trigger_and_wait({"n": 3})
    return {
        "ok": [ok.ok, ok.output, ok.error],
        "bad": [bad.ok, bad.output, (bad.error or {}).get("message"), str(bad.status)],
        "deep": deep.output,
        "me": current_run().id,
    }


@task(id="orch-ch-batch")
async def batch(p: dict[str, Any]) -> list[Any]:
    # Later items sleep less, so children finish in reverse order.
    n = p["n"]
    results = await leaf.batch_trigger_and_wait(
        [{"n": i, "sleep": 10 * (n - i)} for i in range(n)]
    )
    return [[r.ok, r.output["n"] if r.output else None] for r in results]


@task(id="orch-ch-fire")
async def fire(p: dict[str, Any]) -> list[str]:
    _count("fire-body")
    one = await leaf.trigger({"n": 1})
    many = await leaf.batch_trigger([{"n": 2}, {"n": 3}])
    await wait.sleep(3600)  # suspend: the replay passes the triggers again
    return [one.id, *[h.id for h in many]]


@task(id="orch-ch-wait-token")
async def wait_token(p: dict[str, Any]) -> Any:
    token = await wait.create_token()
    metadata.set("token", token.id)
    return (await wait.for_token(token)).output


@task(id="orch-ch-cancel-parent")
async def cancel_parent(p: dict[str, Any]) -> Any:
    rs = await wait_token.batch_trigger_and_wait([{"i": 0}, {"i": 1}])
    return [r.output for r in rs]


@task(id="orch-ch-gather")
async def gather_all(p: dict[str, Any]) -> dict[str, Any]:
    token = await wait.create_token(timeout=3600)
    metadata.set("token", token.id)
    stepped, child, slept, answer = await asyncio.gather(
        step.run("a", _count, "step-a"),
        leaf.trigger_and_wait({"n": 9, "sleep": 120}),
        wait.sleep(60),
        wait.for_token(token),
    )
    tail = await step.run("tail", _count, "tail")
    return {
        "step": stepped,
        "child": child.output["n"],
        "slept": slept,
        "answer": answer.output,
        "tail": tail,
    }


@pytest.fixture
def live(db_url: str) -> Iterator[Client]:
    """A client on the real clock, for tests with worker processes (which have no fake one)."""
    client = Client(store=open_store(db_url), env="dev")
    set_default_client(client)
    yield client
    set_default_client(None)
    client.close()


TASKS = {t.id: t for t in (leaf, middle, top, batch, fire, wait_token, cancel_parent, gather_all)}


def _worker(store: Store, **kw: Any) -> Worker:
    return Worker(store, tasks=TASKS, **kw)


@pytest.mark.outlast(tasks=TASKS)
async def test_trigger_and_wait_results_and_lineage(outlast_env: OutlastEnv) -> None:
    handle = await outlast_env.run(top, {})
    run = handle.run
    assert run.status == RunStatus.COMPLETED, run.error
    out = run.output
    assert out["ok"][0] is True and out["ok"][2] is None
    assert out["ok"][1] == {"n": 1, "parent": handle.id, "root": handle.id, "depth": 1}
    assert out["bad"] == [False, None, "leaf 2 refused", "FAILED"]
    assert out["deep"]["leaf"] == {
        "n": 3,
        "parent": out["deep"]["me"],
        "root": handle.id,
        "depth": 2,
    }
    assert (run.parent_id, run.root_id, run.depth) == (None, None, 0)
    children = outlast_env.client.list_runs(parent_id=handle.id)
    assert len(children) == 3
    assert {(c.parent_id, c.root_id, c.depth) for c in children} == {(handle.id, handle.id, 1)}


async def test_batch_trigger_and_wait_returns_results_in_input_order(
    store: Store, client: Client, clock: FakeClock
) -> None:
    handle = await batch.trigger({"n": 5})
    worker = _worker(store)
    await worker.run_until_idle()
    parent = client.retrieve(handle.id)
    assert parent.status == RunStatus.WAITING
    assert "child runs" in explain.why(store, parent)
    for _ in range(5):  # children wake (and finish) last first
        clock.advance(10)
        await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [[True, i] for i in range(5)]
    finished = sorted(client.list_runs(parent_id=handle.id), key=lambda r: r.finished_at or 0)
    assert [r.payload["n"] for r in finished] == [4, 3, 2, 1, 0]


@pytest.mark.outlast(tasks=TASKS)
async def test_trigger_inside_a_task_is_not_repeated_on_replay(outlast_env: OutlastEnv) -> None:
    handle = await outlast_env.run(fire, {})
    assert handle.status == RunStatus.WAITING
    await outlast_env.advance(3601)
    run = handle.run
    assert run.status == RunStatus.COMPLETED, run.error
    assert CALLS["fire-body"] == 2  # the body replayed…
    children = outlast_env.client.list_runs(parent_id=handle.id)
    assert len(children) == 3  # …but triggered once
    assert sorted(run.output) == sorted(c.id for c in children)
    assert {c.status for c in children} == {RunStatus.COMPLETED}
    assert {(c.root_id, c.depth) for c in children} == {(handle.id, 1)}


async def test_cancelling_a_parent_cancels_its_waiting_children(
    store: Store, client: Client
) -> None:
    handle = await cancel_parent.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    children = client.list_runs(parent_id=handle.id)
    assert len(children) == 2
    assert {c.status for c in children} == {RunStatus.WAITING}
    assert client.retrieve(handle.id).status == RunStatus.WAITING

    run = client.cancel(handle.id)
    assert run.status == RunStatus.CANCELED
    assert {client.retrieve(c.id).status for c in children} == {RunStatus.CANCELED}
    # Nothing resumes afterwards, not even when a child's token is completed late.
    token = client.retrieve(children[0].id).metadata["token"]
    client.complete_token(token, "late")
    await worker.run_until_idle()
    await worker.shutdown()
    assert client.retrieve(handle.id).status == RunStatus.CANCELED
    assert {client.retrieve(c.id).status for c in children} == {RunStatus.CANCELED}


async def test_a_cancelled_child_resumes_its_parent_with_a_failed_result(
    store: Store, client: Client
) -> None:
    handle = await cancel_parent.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    first, second = sorted(client.list_runs(parent_id=handle.id), key=lambda r: r.payload["i"])
    client.cancel(first.id)
    assert client.retrieve(handle.id).status == RunStatus.WAITING  # one child still runs
    client.complete_token(client.retrieve(second.id).metadata["token"], "done")
    await worker.run_until_idle()
    await worker.shutdown()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [None, "done"]  # in input order; the cancelled one has no output


async def test_cancelling_a_parent_cancels_its_queued_children(
    store: Store, client: Client
) -> None:
    handle = await cancel_parent.trigger({})
    worker = Worker(store, tasks={"orch-ch-cancel-parent": cancel_parent})  # no child worker
    await worker.run_until_idle()
    await worker.shutdown()
    children = client.list_runs(parent_id=handle.id)
    assert {c.status for c in children} == {RunStatus.QUEUED}
    client.cancel(handle.id)
    assert {client.retrieve(c.id).status for c in children} == {RunStatus.CANCELED}


async def test_gather_over_every_kind_of_wait_replays_deterministically(
    store: Store, client: Client, clock: FakeClock
) -> None:
    handle = await gather_all.trigger({})
    worker = _worker(store)
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.WAITING
    why = explain.why(store, run)
    assert "a sleep until" in why and "token" in why and "child runs" in why

    # Satisfy the waits one at a time, in an order unlike the code's.
    client.complete_token(run.metadata["token"], {"answer": 42})
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(61)  # the parent's sleep
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(60)  # the child's sleep
    await worker.run_until_idle()
    await worker.shutdown()

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"step": 1, "child": 9, "slept": None, "answer": {"answer": 42}, "tail": 1}
    assert CALLS == {"step-a": 1, "tail": 1}  # every replay took the step from the journal
    kinds = {j.key: j.kind for j in store.journal(handle.id)}
    assert kinds == {
        "create_token": "create_token",
        "a": "step",
        "trigger_and_wait:orch-ch-leaf": "children",
        "sleep": "sleep",
        "for_token": "token",
        "tail": "step",
    }


async def test_gather_survives_a_worker_kill_midway(
    live: Client, db_url: str, tmp_path: Path
) -> None:
    """A task gathering a step, a child and a sleep: the worker is SIGKILLed while the
    step runs, after the child and the sleep were registered. A fresh worker finishes it
    with the right values; the child ran once."""
    ledger, gate = str(tmp_path / "ledger"), str(tmp_path / "gate")
    Path(gate).touch()  # the step waits while this exists
    handle = await app.gather_parent.trigger({"ledger": ledger, "gate": gate, "x": 4, "sleep": 1.5})
    first = spawn_worker(db_url, "tests.apps.orchestration_app")
    second = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            keys = {j.key for j in live.store.journal(handle.id)}
            began = [e for e in app.read_ledger(ledger) if e["ev"] == "step-begin"]
            # Kill only once the child has finished: a child still running on the killed
            # worker would rightly run again (at least once), which is not what this checks.
            children = live.store.list_runs("dev", parent_id=handle.id)
            child_done = bool(children) and all(c.status == RunStatus.COMPLETED for c in children)
            if began and child_done and {"sleep", "trigger_and_wait:orch-gather-child"} <= keys:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the step never started: {app.read_ledger(ledger)}")
        first.send_signal(signal.SIGKILL)
        first.wait()
        os.unlink(gate)

        second = spawn_worker(db_url, "tests.apps.orchestration_app")
        run = await asyncio.to_thread(live.wait_for_run, handle.id, 60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"step": 5, "child": 40, "child_ok": True}
    events = app.read_ledger(ledger)
    assert [e["ev"] for e in events].count("child") == 1  # the child was not re-triggered
    assert len(live.store.list_runs("dev", parent_id=handle.id)) == 1
    assert [e["ev"] for e in events].count("step-begin") == 2  # killed once, then finished
    assert [e["ev"] for e in events].count("step-end") == 1
    assert len(live.list_runs(parent_id=handle.id)) == 1
    assert run.attempt == 2  # the lost attempt counted
