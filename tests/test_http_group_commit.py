"""Group commit of HTTP triggers (outlast/server/trigger_commit.py), on SQLite and PostgreSQL.

Concurrent trigger requests share transactions, and each answer still follows its own
commit (C1): a real server SIGKILLed while requests are in flight never acknowledged a
run it had not written, and retries with the request keys leave exactly one run per key.
A request the database refuses fails alone; two requests of one group with the same key
get one run. The fast path and the full route answer the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.server.trigger_commit import TriggerCommitter
from outlast.store.base import NewRun, Store, TaskDef, TriggerRequest
from tests.test_server_e2e import Fleet

TASK = TaskDef(id="gc-task", queue="task/gc-task",
               payload_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
               spec={})


def _run(n: int, **fields: Any) -> NewRun:
    from outlast._ids import new_id

    return NewRun(id=new_id("run"), env="dev", task_id=TASK.id, queue=TASK.queue,
                  payload=f'{{"n": {n}}}', max_attempts=3, **fields)


@pytest.fixture
async def served(store: Store) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    store.publish_tasks("dev", [TASK])
    app = create_app(store, dashboard=False)
    key = create_key(store, "dev").secret
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                               headers={"Authorization": f"Bearer {key}"}, timeout=60)
    try:
        yield app, client
    finally:
        await client.aclose()


async def test_200_concurrent_triggers_get_distinct_committed_runs(
    store: Store, served: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    _, http = served
    committer = TriggerCommitter.of(store)
    before = (committer.groups, committer.requests)
    gate = asyncio.Semaphore(16)  # 16 connections

    async def one(n: int) -> str:
        async with gate:
            r = await http.post(f"/api/v1/tasks/{TASK.id}/trigger", json={"payload": {"n": n}})
            assert r.status_code == 200, r.text
            assert r.headers["x-trigger-jwt"]  # as compat.JwtHeader adds it
            return str(r.json()["id"])

    ids = await asyncio.gather(*(one(n) for n in range(200)))
    assert len(set(ids)) == 200
    for n, run_id in enumerate(ids):
        run = store.get_run("dev", run_id)
        assert run is not None and run.payload == {"n": n}
    assert committer.requests - before[1] == 200
    # Shared transactions: fewer commits than requests.
    assert committer.groups - before[0] < 200


async def test_fast_path_and_full_route_answer_the_same(
    served: tuple[FastAPI, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, http = served
    path = f"/api/v1/tasks/{TASK.id}/trigger"
    answers = []
    for fast in ("1", "0"):
        monkeypatch.setenv("OUTLAST_HTTP_FAST_PATH", fast)
        app.middleware_stack = None  # rebuilt with the setting
        ok = await http.post(path, json={"payload": {"n": 1}, "options": {"tags": ["a"]}},
                             headers={"Idempotency-Key": f"same-{fast}"})
        again = await http.post(path, json={"payload": {"n": 2}},
                                headers={"Idempotency-Key": f"same-{fast}"})
        bad = await http.post(path, json={"payload": {"n": "x"}})
        unknown = await http.post("/api/v1/tasks/nope/trigger", json={"payload": {}})
        broken = await http.post(path, content=b"{", headers={"content-type": "application/json"})
        assert ok.status_code == 200 and again.json()["id"] == ok.json()["id"]
        assert again.json()["isCached"] is True
        answers.append([(r.status_code, r.json().get("field"), r.json().get("code"))
                        for r in (bad, unknown, broken)])
    assert answers[0] == answers[1]
    assert answers[0][0] == (422, "payload.n", "validation_error")


class _Held:
    """A store whose next trigger_group waits until released: the requests queued
    meanwhile make the next group, all of them together."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.groups: list[int] = []

    def trigger_group(self, requests: Sequence[TriggerRequest]) -> None:
        if not self.groups:
            self.entered.set()
            self.release.wait(30)
        self.groups.append(len(requests))
        self.store.trigger_group(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def _grouped(store: Store, *requests: tuple[list[NewRun], str | None]
                   ) -> list[Any]:
    """The first request alone, then all the others in one group; each one's outcome
    (results and cached, or the exception)."""
    held = _Held(store)
    committer = TriggerCommitter(held)  # type: ignore[arg-type]
    first = asyncio.ensure_future(committer.trigger("dev", [_run(0)], None))
    await asyncio.to_thread(held.entered.wait, 30)
    rest = [asyncio.ensure_future(committer.trigger("dev", runs, key))
            for runs, key in requests]
    await asyncio.sleep(0)  # each one runs up to its wait: queued
    assert committer._queue.qsize() == len(requests)
    held.release.set()
    await first
    out = await asyncio.gather(*rest, return_exceptions=True)
    # The first transaction after the held one had all of them (a refused one is then
    # split, in further transactions).
    assert held.groups[:2] == [1, len(requests)], held.groups
    return out


async def test_same_keys_in_one_group_get_one_run(store: Store) -> None:
    store.publish_tasks("dev", [TASK])
    out = await _grouped(
        store,
        ([_run(1, idempotency_key="k1", idempotency_ttl=3600.0)], None),
        ([_run(2, idempotency_key="k1", idempotency_ttl=3600.0)], None),
        ([_run(3)], "request-1"),
        ([_run(4)], "request-1"),
    )
    (a, a_cached), (b, _), (c, c_cached), (d, d_cached) = out
    assert a[0].id == b[0].id and not a_cached and b[0].is_cached
    assert c[0].id == d[0].id and not c_cached and d_cached
    assert store.get_run("dev", a[0].id) is not None
    assert store.get_run("dev", c[0].id) is not None
    assert sum(sum(v.values()) for v in store.count_runs("dev").values()) == 3


async def test_a_request_the_database_refuses_fails_alone(store: Store) -> None:
    store.publish_tasks("dev", [TASK])
    # A lone surrogate cannot be encoded for either database: refused on its data.
    bad = _run(2, concurrency_key="\ud800")
    out = await _grouped(store, ([_run(1)], None), ([bad], None), ([_run(3), _run(4)], "rk"),
                         ([_run(5)], None))
    assert isinstance(out[1], Exception) and store.refused_data(out[1])
    good = [r for i, o in enumerate(out) if i != 1 for r in o[0]]
    assert len(good) == 4
    for r in good:
        assert store.get_run("dev", r.id) is not None
    assert store.get_run("dev", bad.id) is None


def test_server_killed_mid_requests_acknowledged_only_what_it_committed(
    db_url: str, tmp_path: Path
) -> None:
    """C1 over HTTP with a real server: SIGKILL while 16 connections trigger; every 2xx
    names a run that exists; retries with the same request keys (after a restart) give
    exactly one run per key, the acknowledged ones their first run."""
    fleet = Fleet(db_url, tmp_path)
    try:
        fleet.cli("migrate")
        from outlast.store import open_store

        store = open_store(db_url)
        try:
            store.publish_tasks("dev", [TASK])
        finally:
            store.close()
        key = fleet.key()
        keys = [f"c1-{i}" for i in range(400)]
        acked: dict[str, str] = {}
        url = fleet.server()()

        async def load() -> None:
            queue = iter(keys)
            killed = asyncio.Event()

            async def conn() -> None:
                async with httpx.AsyncClient(base_url=url, timeout=10, headers={
                        "Authorization": f"Bearer {key}"}) as http:
                    for k in queue:
                        try:
                            r = await http.post(f"/api/v1/tasks/{TASK.id}/trigger",
                                                json={"payload": {"n": 1}},
                                                headers={"Idempotency-Key": k})
                        except httpx.TransportError:
                            return
                        if r.status_code == 200:
                            acked[k] = r.json()["id"]
                        if len(acked) >= 120 and not killed.is_set():
                            killed.set()
                            os.kill(fleet.procs[-1].pid, signal.SIGKILL)

            await asyncio.gather(*(conn() for _ in range(16)))

        asyncio.run(load())
        fleet.procs[-1].wait(10)
        assert fleet.procs[-1].returncode == -signal.SIGKILL
        assert 120 <= len(acked) < len(keys)
        store = open_store(db_url)
        try:
            for k, run_id in acked.items():  # no 2xx without its row
                assert store.get_run("dev", run_id) is not None, k
        finally:
            store.close()

        url = fleet.server()()
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            again = {}
            for k in keys:
                r = http.post(f"/api/v1/tasks/{TASK.id}/trigger", json={"payload": {"n": 1}},
                              headers={"Idempotency-Key": k})
                assert r.status_code == 200, r.text
                again[k] = r.json()["id"]
        assert all(again[k] == run_id for k, run_id in acked.items())
        store = open_store(db_url)
        try:
            assert sum(sum(v.values()) for v in store.count_runs("dev").values()) == len(keys)
            assert all(store.get_run("dev", i) is not None for i in again.values())
        finally:
            store.close()
    finally:
        for p in fleet.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_a_group_of_plain_runs_keeps_tags_delays_and_options(store: Store) -> None:
    """The one-statement path of a group (PostgreSQL's insert_runs_alone) writes what the
    transaction path writes: tags (and their index rows), delays, options."""
    store.publish_tasks("dev", [TASK])
    store.trigger([_run(0)])  # the queue's rows exist from here: the group takes the shortcut
    runs = [_run(1, tags=["a", "b"]), _run(2, delay=60.0, priority=5.0),
            _run(3, concurrency_key="", max_duration=9.0, version="v7")]
    results = store.trigger(runs)
    assert [r.id for r in results] == [r.id for r in runs]
    got = {r.id: store.get_run("dev", r.id) for r in runs}
    assert got[runs[0].id] is not None and got[runs[0].id].tags == ["a", "b"]
    assert got[runs[1].id] is not None and str(got[runs[1].id].status) == "DELAYED"
    assert got[runs[2].id] is not None and got[runs[2].id].version == "v7"
    assert [r.id for r in store.list_runs("dev", tag="b")] == [runs[0].id]


def test_a_group_of_plain_runs_keeps_text_and_numbers_exactly(store: Store) -> None:
    """PostgreSQL's insert_runs_alone sends a group's rows as one JSON document: quotes,
    backslashes, escapes and non-ASCII text, and fractional numbers, come back as sent."""
    store.publish_tasks("dev", [TASK])
    store.trigger([_run(0)])  # the queue's rows exist from here: the group takes the shortcut
    odd = 'q"uo\\te \u00e9\u4e2d\U0001f600 \\u0000 \n\t'
    runs = [_run(1, metadata=json.dumps({"m": odd}), tags=[odd[:20]], priority=0.1,
                 ttl=12.345678901234567),
            _run(2, delay=1e-3, max_duration=86400.000001)]
    runs[0].payload = json.dumps({"s": odd})
    results = store.trigger(runs)
    assert [r.id for r in results] == [r.id for r in runs]
    first, second = store.get_run("dev", runs[0].id), store.get_run("dev", runs[1].id)
    assert first is not None and second is not None
    assert first.payload == {"s": odd} and first.metadata == {"m": odd}
    assert first.tags == [odd[:20]] and first.priority == 0.1
    assert second.max_duration == 86400.000001 and str(second.status) == "DELAYED"
    assert [r.id for r in store.list_runs("dev", tag=odd[:20])] == [runs[0].id]
