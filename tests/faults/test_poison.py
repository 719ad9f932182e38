"""Poison input never wedges a worker (issue 16, defect 5).

A NUL byte (or a lone surrogate) in text that task code logs, raises, stores or returns
once made PostgreSQL refuse the commit batch carrying it; the committer retried that batch
for ever and every run on the worker stopped with it. Now text in JSON columns keeps its
NUL (JSON escapes it), plain-text columns (log and error messages) store it escaped as
the six characters ``\\u0000`` on both backends, and what still cannot be stored (a step
name with NUL, a lone surrogate) fails only the run that produced it, with the error code
``unstorable_data``, while the rest of its batch commits.

An in-process worker per phase; the FakeClock never moves, so no lease expires. Each
phase is bounded: on the old code the first one times out with every run stuck.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import httpx
import psycopg
import pytest

from outlast import Retry, Worker, logger, metadata, step, task
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store.base import Store
from outlast.tasks import Task

from .invariant import check_liveness

NUL = "bad\u0000byte"
SURROGATE = "bad\ud800byte"
ONCE = Retry(max_attempts=1)


@task(id="poison-log", retry=ONCE)
async def log_line(p: dict[str, str]) -> str:
    logger.info(p["s"])  # a plain-text message
    logger.info("field", value=p["s"])  # a JSON field
    return "ok"


@task(id="poison-step-error", retry=ONCE)
async def step_error(p: dict[str, str]) -> str:
    def boom() -> str:
        raise ValueError(p["s"])

    return str(await step.run("boom", boom))


@task(id="poison-step-output", retry=ONCE)
async def step_output(p: dict[str, str]) -> str:
    async def echo() -> str:
        return p["s"]

    return str(await step.run("echo", echo))


@task(id="poison-metadata", retry=ONCE)
async def set_metadata(p: dict[str, str]) -> str:
    metadata.set("k", p["s"])
    return "ok"


@task(id="poison-output", retry=ONCE)
async def output(p: dict[str, str]) -> str:
    return p["s"]


@task(id="poison-task-error", retry=ONCE)
async def task_error(p: dict[str, str]) -> str:
    raise ValueError(p["s"])


@task(id="poison-step-name", retry=ONCE)
async def step_name(p: dict[str, str]) -> str:
    async def one() -> int:
        return 1

    await step.run(f"fetch {p['s']}", one)
    return "ok"


@task(id="poison-surrogate-log", retry=ONCE)
async def surrogate_log(p: dict[str, str]) -> str:
    logger.info(SURROGATE)
    return "ok"


@task(id="poison-surrogate-step-name", retry=ONCE)
async def surrogate_step_name(p: dict[str, str]) -> str:
    async def one() -> int:
        return 1

    await step.run(SURROGATE, one)
    return "ok"


@task(id="poison-neighbour")
async def neighbour(p: dict[str, int]) -> int:
    async def double() -> int:
        return 2 * p["n"]

    logger.info("neighbour", n=p["n"])
    return int(await step.run("double", double))


TASKS: list[Task[Any, Any]] = [
    log_line, step_error, step_output, set_metadata, output, task_error, step_name,
    surrogate_log, surrogate_step_name, neighbour,
]


async def _drain(store: Store) -> None:
    """One fresh worker, run until idle, bounded: a wedged committer fails the test."""
    w = Worker(store, tasks={t.id: t for t in TASKS}, env="dev", concurrency=20)
    done = asyncio.create_task(w.run_until_idle(max_seconds=30))
    finished, _ = await asyncio.wait({done}, timeout=40)
    assert finished, "the worker wedged: its committer never finished a batch"
    await done
    await asyncio.wait_for(w.shutdown(grace=0), 20)


async def _trigger_all(n: int) -> dict[str, str]:
    ids = {t.id: (await t.trigger({"s": NUL})).id for t in TASKS if t is not neighbour}
    for i in range(n):
        ids[f"neighbour-{i}"] = (await neighbour.trigger({"n": i})).id
    return ids


async def _trigger_over_http(store: Store, task_id: str, payload: Any) -> str:
    app = create_app(store, dashboard=False)
    headers = {"Authorization": f"Bearer {create_key(store, 'dev').secret}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://outlast.test", headers=headers) as http:
        resp = await http.post(f"/api/v1/tasks/{task_id}/trigger", json={"payload": payload})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _error(client: Client, run_id: str) -> dict[str, Any]:
    run = client.retrieve(run_id)
    assert run.status == RunStatus.FAILED, (run.status, run.error)
    assert run.error is not None
    return run.error


async def test_poison_fails_only_its_run_and_never_wedges_a_worker(
    store: Store, client: Client, db_url: str
) -> None:
    ids = await _trigger_all(20)
    ids["over-http"] = await _trigger_over_http(store, "poison-log", {"s": NUL})
    await _drain(store)

    for i in range(20):
        run = client.retrieve(ids[f"neighbour-{i}"])
        assert run.status == RunStatus.COMPLETED, (run.status, run.error)
        assert run.output == 2 * i

    # JSON columns keep the NUL; plain-text messages hold it escaped, on both backends.
    for key in ("poison-log", "over-http"):  # the HTTP API takes the NUL in a payload
        run = client.retrieve(ids[key])
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.payload == {"s": NUL}
        logs = [(e.message, e.data) for e in store.events(run.id) if e.kind == "log"]
        assert logs == [("bad\\u0000byte", None), ("field", {"value": NUL})]
    for tid in ("poison-step-output", "poison-output"):
        run = client.retrieve(ids[tid])
        assert (run.status, run.output) == (RunStatus.COMPLETED, NUL), run.error
    run = client.retrieve(ids["poison-metadata"])
    assert (run.status, run.metadata) == (RunStatus.COMPLETED, {"k": NUL}), run.error
    assert _error(client, ids["poison-task-error"])["message"] == NUL
    assert _error(client, ids["poison-step-error"])["message"] == NUL
    failed = [e.message for e in store.events(ids["poison-step-error"])
              if e.kind == "step_failed"]
    assert failed == ["step 'boom' failed: ValueError: bad\\u0000byte"]

    run = client.retrieve(ids["poison-surrogate-log"])
    assert run.status == RunStatus.COMPLETED, run.error
    logs = [e.message for e in store.events(run.id) if e.kind == "log"]
    assert logs == ["bad\\ud800byte"]

    # What no backend can store fails its own run, with a code that says so.
    for tid in ("poison-step-name", "poison-surrogate-step-name"):
        error = _error(client, ids[tid])
        assert error["code"] == "unstorable_data", error
        assert "could not be stored" in error["message"], error

    # A second worker takes new work, poison included, and is not wedged either.
    again = await _trigger_all(5)
    await _drain(store)
    for i in range(5):
        assert client.retrieve(again[f"neighbour-{i}"]).status == RunStatus.COMPLETED
    assert _error(client, again["poison-step-name"])["code"] == "unstorable_data"
    check_liveness(db_url)


async def test_a_lost_connection_is_retried_as_it_was_not_split(
    store: Store, client: Client, db_url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other half of the rule: a batch that fails because the database is unwell
    (locked, disconnected) is retried whole, and fails no run."""
    left = [3]
    real = store.apply_and_claim

    def flaky(worker_id: str, ops: Any, *args: Any, **kwargs: Any) -> Any:
        if ops and left[0] > 0:
            left[0] -= 1
            if backend == "sqlite":
                raise sqlite3.OperationalError("database is locked")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(worker_id, ops, *args, **kwargs)

    monkeypatch.setattr(store, "apply_and_claim", flaky)
    ids = [(await neighbour.trigger({"n": i})).id for i in range(5)]
    await _drain(store)
    assert left == [0]
    assert [client.retrieve(i).output for i in ids] == [0, 2, 4, 6, 8]
    check_liveness(db_url)
