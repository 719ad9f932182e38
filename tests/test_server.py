"""The HTTP API in-process (httpx over ASGI, no sockets), on SQLite and PostgreSQL.

Every endpoint's happy path and error shapes; environments as walls (another
environment's run, token or queue answers 404, as if it did not exist); secret keys
(missing, wrong, revoked: 401); signed callback URLs; body and payload limits (413, with
nothing written); 422 naming the field, both when the task's code is imported here and
when only a worker published its JSON schema; request idempotency (C1); a 50,000-item
batch in one request; the SSE event stream. Figures are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from fastapi import FastAPI

from outlast import Worker
from outlast._clock import FakeClock
from outlast._http import HttpTransport
from outlast.server import create_app
from outlast.server.auth import create_key, hash_key
from outlast.store.base import Store, TaskDef
from tests.apps import server_app

TASKS = {
    t.id: t
    for t in (server_app.order, server_app.ledger, server_app.stream, server_app.child,
              server_app.parent, server_app.queued, server_app.fail)
}
# Published by a (pretend) remote worker: the server has its JSON schema, not its code.
REMOTE = TaskDef(
    id="srv-remote",
    queue="task/srv-remote",
    payload_schema={
        "type": "object",
        "properties": {"n": {"type": "integer"}, "name": {"type": "string"}},
        "required": ["n"],
    },
    spec={"retry": {"max_attempts": 2}},
)


@dataclass
class Api:
    store: Store
    app: FastAPI
    dev: httpx.AsyncClient
    prod: httpx.AsyncClient
    anon: httpx.AsyncClient
    keys: dict[str, str]

    def client(self, key: str | None, app: FastAPI | None = None) -> httpx.AsyncClient:
        return _client(app or self.app, key)

    def runs(self, env: str = "dev") -> int:
        return sum(sum(by.values()) for by in self.store.count_runs(env).values())

    async def drain(self) -> None:
        worker = Worker(self.store, tasks=TASKS, env="dev", life_lock=False)
        try:
            await worker.run_until_idle()
        finally:
            await worker.shutdown()


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    store.publish_tasks("dev", [REMOTE])
    keys = {"dev": create_key(store, "dev").secret, "prod": create_key(store, "prod").secret}
    app = create_app(store, dashboard=False)
    clients = [_client(app, keys["dev"]), _client(app, keys["prod"]), _client(app, None)]
    try:
        yield Api(store, app, *clients, keys)
    finally:
        for c in clients:
            await c.aclose()


def _client(app: FastAPI, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://outlast.test", headers=headers, timeout=120)


def error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> str:
    """Assert the one error shape; returns the message."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"], body
    if field is not None:
        assert body.get("field") == field, body
    return str(body["error"])


async def trigger(c: httpx.AsyncClient, task_id: str, payload: Any = None, **options: Any
                  ) -> str:
    resp = await c.post(f"/api/v1/tasks/{task_id}/trigger",
                        json={"payload": payload, "options": options or None})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


# -- health, documents, keys -------------------------------------------------------------


async def test_health_ready_and_documents(api: Api) -> None:
    assert (await api.anon.get("/api/v1/health")).json()["ok"] is True
    assert (await api.anon.get("/api/v1/ready")).json() == {"ok": True}
    doc = (await api.anon.get("/api/v1/openapi.json")).json()
    assert "/api/v1/tasks/{task_id}/trigger" in doc["paths"]
    assert (await api.anon.get("/api/v1/docs")).status_code == 200
    error(await api.anon.get("/api/v1/nothing-here"), 404, "not_found")
    resp = await api.dev.delete("/api/v1/waitpoints/tokens")
    error(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "GET, POST"


async def test_missing_wrong_and_revoked_keys_are_refused(api: Api) -> None:
    resp = await api.anon.get("/api/v1/runs")
    error(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"] == "Bearer"
    async with api.client(api.keys["dev"] + "x") as wrong:
        error(await wrong.get("/api/v1/runs"), 401, "unauthorized")
    basic = await api.anon.get("/api/v1/runs",
                               headers={"Authorization": f"Basic {api.keys['dev']}"})
    error(basic, 401, "unauthorized")

    # Stored hashed, listed by prefix only.
    secret = create_key(api.store, "dev").secret
    rows = [r for r in api.store.list_api_keys("dev") if secret.startswith(r["prefix"])]
    assert len(rows) == 1 and secret not in {str(v) for v in rows[0].values()}
    assert api.store.find_api_key(secret) is None
    assert api.store.find_api_key(hash_key(secret)) is not None
    async with api.client(secret) as c:
        assert (await c.get("/api/v1/runs")).status_code == 200
    assert api.store.revoke_api_key(rows[0]["id"]) == 1
    # A server caches a key's verdict for 2 s; a server started now sees the revocation.
    fresh = create_app(api.store, dashboard=False)
    async with api.client(secret, fresh) as c:
        error(await c.get("/api/v1/runs"), 401, "unauthorized")
    async with api.client(api.keys["dev"], fresh) as c:  # other keys are unaffected
        assert (await c.get("/api/v1/runs")).status_code == 200


# -- runs ---------------------------------------------------------------------------------


async def test_trigger_retrieve_and_run(api: Api) -> None:
    run_id = await trigger(api.dev, "srv-order", {"sku": "A-1", "qty": 3},
                           tags=["shop", "eu"], metadata={"source": "test"},
                           idempotencyKey="order-1", maxAttempts=5)
    d = (await api.dev.get(f"/api/v1/runs/{run_id}")).json()
    assert d["status"] == "QUEUED" and d["isQueued"] is True
    assert d["payload"] == {"sku": "A-1", "qty": 3}
    assert d["tags"] == ["shop", "eu"] and d["metadata"] == {"source": "test"}
    assert d["idempotencyKey"] == "order-1" and d["maxAttempts"] == 5
    assert d["attemptCount"] == 0 and "createdAt" in d and "startedAt" not in d
    assert "no live worker serves task 'srv-order'" in d["why"]
    assert "output" not in d and "error" not in d

    # The same idempotency key returns the first run.
    again = await api.dev.post("/api/v1/tasks/srv-order/trigger",
                               json={"payload": {"sku": "B", "qty": 1},
                                     "options": {"idempotencyKey": "order-1"}})
    assert again.json() == {"id": run_id, "isCached": True}

    await api.drain()
    d = (await api.dev.get(f"/api/v1/runs/{run_id}")).json()
    assert d["status"] == "COMPLETED" and d["isSuccess"] is True
    assert d["output"] == {"sku": "A-1", "total": 6}
    assert d["attemptCount"] == 1 and d["startedAt"] and d["finishedAt"]
    assert d["why"] == "the run ended COMPLETED"
    failed_id = await trigger(api.dev, "srv-fail", "x")
    await api.drain()
    f = (await api.dev.get(f"/api/v1/runs/{failed_id}")).json()
    assert f["status"] == "FAILED" and f["isFailed"] is True and "output" not in f
    assert f["error"]["name"] == "ValueError" and f["error"]["message"] == "cannot process 'x'"
    assert "ValueError" in f["error"]["stackTrace"] and f["attemptCount"] == 1
    # The Trigger.dev SDK's path answers the same.
    assert (await api.dev.get(f"/api/v3/runs/{run_id}")).json()["output"] == d["output"]
    error(await api.dev.get("/api/v1/runs/run_doesnotexist"), 404, "run_not_found", "run_id")


async def test_list_filters_and_cursor_pagination(api: Api, clock: FakeClock) -> None:
    t0 = clock.now()
    ids = []
    for i in range(5):
        ids.append(await trigger(api.dev, "srv-order", {"sku": f"s{i}", "qty": i},
                                 tags=["even" if i % 2 == 0 else "odd"]))
        clock.advance(10)
    other = await trigger(api.dev, "srv-remote", {"n": 1})
    cancelled = (await api.dev.post(f"/api/v1/runs/{ids[0]}/cancel")).json()
    assert cancelled == {"id": ids[0], "status": "CANCELED"}

    async def listed(**params: Any) -> list[str]:
        resp = await api.dev.get("/api/v1/runs", params=params)
        assert resp.status_code == 200, resp.text
        return [d["id"] for d in resp.json()["data"]]

    newest_first = [other, *reversed(ids)]
    assert await listed() == newest_first
    assert await listed(task="srv-order") == list(reversed(ids))
    assert await listed(tag="even") == [ids[4], ids[2], ids[0]]
    assert await listed(status="CANCELED") == [ids[0]]
    assert await listed(status="queued,canceled", task="srv-order") == list(reversed(ids))
    assert await listed(queue="task/srv-remote") == [other]
    assert await listed(created_from=t0 + 10, created_to=t0 + 30) == [ids[3], ids[2], ids[1]]
    assert await listed(search=ids[2]) == [ids[2]]
    # The Trigger.dev SDK's names for the same filters.
    assert await listed(**{"filter[taskIdentifier]": "srv-remote"}) == [other]
    assert await listed(**{"filter[status]": "CANCELED", "page[size]": 1}) == [ids[0]]

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = (await api.dev.get("/api/v1/runs", params=params)).json()
        pages.append([d["id"] for d in body["data"]])
        cursor = body["pagination"].get("next")
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [i for p in pages for i in p] == newest_first

    error(await api.dev.get("/api/v1/runs", params={"limit": 0}), 422, "validation_error",
          "limit")
    error(await api.dev.get("/api/v1/runs", params={"created_from": "yesterday"}), 422,
          "validation_error", "created_from")


async def test_parent_and_children_in_a_retrieved_run(api: Api) -> None:
    parent_id = await trigger(api.dev, "srv-parent", 20)
    await api.drain()
    parent = (await api.dev.get(f"/api/v1/runs/{parent_id}")).json()
    assert parent["status"] == "COMPLETED" and parent["output"] == 41
    [child] = parent["relatedRuns"]["children"]
    assert child["taskIdentifier"] == "srv-child" and child["status"] == "COMPLETED"
    c = (await api.dev.get(f"/api/v1/runs/{child['id']}")).json()
    assert c["parentId"] == parent_id and c["relatedRuns"]["parent"]["id"] == parent_id
    assert c["depth"] == 1 and c["output"] == 40
    steps = (await api.dev.get(f"/api/v1/runs/{parent_id}/steps")).json()["data"]
    assert [s["key"] for s in steps] == ["trigger_and_wait:srv-child"]
    logs = (await api.dev.get(f"/api/v1/runs/{parent_id}/logs")).json()["data"]
    assert isinstance(logs, list)


async def test_cancel_and_replay(api: Api) -> None:
    run_id = await trigger(api.dev, "srv-order", {"sku": "r", "qty": 2}, tags=["x"])
    assert (await api.dev.post(f"/api/v1/runs/{run_id}/cancel")).json()["status"] == "CANCELED"
    # Cancelling an ended run changes nothing and is not an error.
    assert (await api.dev.post(f"/api/v2/runs/{run_id}/cancel")).json()["status"] == "CANCELED"
    error(await api.dev.post("/api/v1/runs/run_nope/cancel"), 404, "run_not_found", "run_id")

    same = (await api.dev.post(f"/api/v1/runs/{run_id}/replay")).json()
    assert same["replayedFrom"] == run_id and same["taskIdentifier"] == "srv-order"
    new = (await api.dev.post(f"/api/v1/runs/{run_id}/replay",
                              json={"payload": {"sku": "r2", "qty": 5}})).json()
    before = api.runs()
    resp = await api.dev.post(f"/api/v1/runs/{run_id}/replay", json={"payload": {"qty": "x"}})
    error(resp, 422, "validation_error")
    assert resp.json()["field"].startswith("payload.")
    assert api.runs() == before  # nothing written
    await api.drain()
    a = (await api.dev.get(f"/api/v1/runs/{same['id']}")).json()
    b = (await api.dev.get(f"/api/v1/runs/{new['id']}")).json()
    assert a["replayedFrom"] == run_id and a["output"] == {"sku": "r", "total": 4}
    assert a["tags"] == ["x"]
    assert b["payload"] == {"sku": "r2", "qty": 5} and b["output"] == {"sku": "r2", "total": 10}
    error(await api.dev.post("/api/v1/runs/run_nope/replay"), 404, "run_not_found")
    # With a request key, a retried replay returns the first replay's run.
    first, retried = [
        (await api.dev.post(f"/api/v1/runs/{run_id}/replay",
                            headers={"Idempotency-Key": "replay-1"})).json()
        for _ in range(2)
    ]
    assert first["id"] == retried["id"] != same["id"]


# -- validation ---------------------------------------------------------------------------


async def test_422_names_the_field_and_writes_nothing(api: Api) -> None:
    async def post(path: str, body: Any) -> httpx.Response:
        return await api.dev.post(path, json=body)

    cases = [
        # The task's pydantic model, imported here.
        ("/api/v1/tasks/srv-order/trigger", {"payload": {"sku": "a", "qty": "many"}},
         "payload.qty"),
        ("/api/v1/tasks/srv-order/trigger", {"payload": {"qty": 1}}, "payload.sku"),
        # Only the JSON schema a worker published (TaskDef), no code here.
        ("/api/v1/tasks/srv-remote/trigger", {"payload": {"n": "one"}}, "payload.n"),
        ("/api/v1/tasks/srv-remote/trigger", {"payload": {"name": "x"}}, "payload.n"),
        ("/api/v1/tasks/srv-remote/trigger", {"payload": [1]}, "payload"),
        # Options.
        ("/api/v1/tasks/srv-remote/trigger",
         {"payload": {"n": 1}, "options": {"maxAttempts": 0}}, "options.maxAttempts"),
        ("/api/v1/tasks/srv-remote/trigger",
         {"payload": {"n": 1}, "options": {"delay": "soon"}}, "options.delay"),
        ("/api/v1/tasks/srv-remote/trigger",
         {"payload": {"n": 1}, "options": {"tags": [f"t{i}" for i in range(11)]}},
         "options.tags"),
        ("/api/v1/tasks/srv-remote/trigger", [1, 2], None),
        # A batch names the item; one bad item writes none of the others.
        ("/api/v1/tasks/srv-remote/batch",
         {"items": [{"payload": {"n": i}} for i in range(3)] + [{"payload": {"n": "x"}}]},
         "items[3].payload.n"),
        ("/api/v2/tasks/batch",
         {"items": [{"task": "srv-remote", "payload": {"n": 1}}, {"payload": {"n": 1}}]},
         "items[1].task"),
    ]
    for path, body, field in cases:
        resp = await post(path, body)
        message = error(resp, 422, "validation_error", field)
        if field:
            assert field.split(".")[-1] in message, message
    resp = await api.dev.post("/api/v1/tasks/srv-remote/trigger", content=b"{not json",
                              headers={"content-type": "application/json"})
    error(resp, 422, "validation_error", "body")
    error(await post("/api/v1/tasks/srv-nope/trigger", {"payload": 1}), 404, "unknown_task",
          "task_id")
    assert api.runs() == 0

    # Valid input to the same endpoints works.
    assert await trigger(api.dev, "srv-remote", {"n": 1})
    resp = await post("/api/v1/tasks/srv-remote/batch", {"items": [{"payload": {"n": 2}}]})
    assert resp.json()["runCount"] == 1
    assert api.runs() == 2


async def test_request_idempotency_header_returns_the_first_run(api: Api) -> None:
    body = {"payload": {"n": 7}}
    first = await api.dev.post("/api/v1/tasks/srv-remote/trigger", json=body,
                               headers={"Idempotency-Key": "req-1"})
    retry = await api.dev.post("/api/v1/tasks/srv-remote/trigger", json=body,
                               headers={"Idempotency-Key": "req-1"})
    assert first.json() == {"id": first.json()["id"], "isCached": False}
    assert retry.json() == {"id": first.json()["id"], "isCached": True}
    sdk = [await api.dev.post("/api/v1/tasks/srv-remote/trigger", json=body,
                              headers={"x-trigger-request-idempotency-key": "req-2"})
           for _ in range(2)]
    assert sdk[0].json()["id"] == sdk[1].json()["id"] != first.json()["id"]
    batch = {"items": [{"payload": {"n": i}} for i in range(3)]}
    b1 = await api.dev.post("/api/v1/tasks/srv-remote/batch", json=batch,
                            headers={"Idempotency-Key": "req-3"})
    b2 = await api.dev.post("/api/v1/tasks/srv-remote/batch", json=batch,
                            headers={"Idempotency-Key": "req-3"})
    assert [r["id"] for r in b1.json()["runs"]] == [r["id"] for r in b2.json()["runs"]]
    assert all(r["isCached"] for r in b2.json()["runs"])
    # A request that failed validation did not use its key up.
    bad = await api.dev.post("/api/v1/tasks/srv-remote/trigger", json={"payload": {}},
                             headers={"Idempotency-Key": "req-4"})
    error(bad, 422, "validation_error", "payload.n")
    good = await api.dev.post("/api/v1/tasks/srv-remote/trigger", json=body,
                              headers={"Idempotency-Key": "req-4"})
    assert good.json()["isCached"] is False
    # Keys are per environment.
    api.store.publish_tasks("prod", [REMOTE])
    other = await api.prod.post("/api/v1/tasks/srv-remote/trigger", json=body,
                                headers={"Idempotency-Key": "req-1"})
    assert other.json()["isCached"] is False
    assert api.runs() == 1 + 1 + 3 + 1 and api.runs("prod") == 1


# -- environments -------------------------------------------------------------------------


async def test_another_environment_sees_nothing(api: Api) -> None:
    await api.drain()  # declares the queues
    run_id = await trigger(api.dev, "srv-order", {"sku": "a", "qty": 1})
    token = (await api.dev.post("/api/v1/waitpoints/tokens", json={})).json()
    p = api.prod
    for resp in (
        await p.get(f"/api/v1/runs/{run_id}"),
        await p.get(f"/api/v3/runs/{run_id}"),
        await p.post(f"/api/v1/runs/{run_id}/cancel"),
        await p.post(f"/api/v2/runs/{run_id}/cancel"),
        await p.post(f"/api/v1/runs/{run_id}/replay"),
        await p.get(f"/api/v1/runs/{run_id}/steps"),
        await p.get(f"/api/v1/runs/{run_id}/logs"),
        await p.get(f"/api/v1/runs/{run_id}/events"),
    ):
        error(resp, 404, "run_not_found")
    for resp in (
        await p.get(f"/api/v1/waitpoints/tokens/{token['id']}"),
        await p.post(f"/api/v1/waitpoints/tokens/{token['id']}/complete", json={"data": 1}),
    ):
        error(resp, 404, "token_not_found")
    for resp in (
        await p.get("/api/v1/queues/srv-limited/state"),
        await p.post("/api/v1/queues/srv-limited/pause", json={"action": "pause"}),
        await p.post("/api/v1/queues/srv-limited/concurrency", json={"limit": 1}),
    ):
        error(resp, 404, "queue_not_found")
    assert (await p.get("/api/v1/runs")).json()["data"] == []
    assert (await p.get("/api/v1/runs", params={"search": run_id})).json()["data"] == []
    assert (await p.get("/api/v1/waitpoints/tokens")).json()["data"] == []
    assert (await p.get("/api/v1/queues")).json()["data"] == []
    # Task definitions are per environment too.
    error(await p.post("/api/v1/tasks/srv-remote/trigger", json={"payload": {"n": 1}}), 404,
          "unknown_task")
    # Untouched in its own environment.
    assert (await api.dev.get(f"/api/v1/runs/{run_id}")).json()["status"] == "QUEUED"
    tok = (await api.dev.get(f"/api/v1/waitpoints/tokens/{token['id']}")).json()
    assert tok["status"] == "WAITING"
    q = (await api.dev.get("/api/v1/queues/srv-limited/state")).json()
    assert q["paused"] is False and q["concurrencyLimit"] == 2


# -- waitpoint tokens ---------------------------------------------------------------------


async def test_token_that_timed_out_is_a_409(api: Api, clock: FakeClock) -> None:
    token = (await api.dev.post("/api/v1/waitpoints/tokens", json={"timeout": 60})).json()
    clock.advance(61)
    api.store.tick()
    tok = (await api.dev.get(f"/api/v1/waitpoints/tokens/{token['id']}")).json()
    assert tok["status"] == "TIMED_OUT"
    # Retrying cannot help: the one case of 409.
    error(await api.dev.post(f"/api/v1/waitpoints/tokens/{token['id']}/complete",
                             json={"data": 1}), 409, "token_timed_out")
    error(await api.anon.post(urlsplit(token["url"]).path, json={"late": True}), 409,
          "token_timed_out")


async def test_tokens_create_retrieve_list_complete(api: Api) -> None:
    made = (await api.dev.post("/api/v1/waitpoints/tokens",
                               json={"timeout": "1h", "tags": ["a"],
                                     "idempotencyKey": "tok-1"})).json()
    assert made["isCached"] is False and "/callback/" in made["url"]
    again = (await api.dev.post("/api/v1/waitpoints/tokens",
                                json={"idempotencyKey": "tok-1"})).json()
    assert again["id"] == made["id"] and again["isCached"] is True
    tok = (await api.dev.get(f"/api/v1/waitpoints/tokens/{made['id']}")).json()
    assert tok["status"] == "WAITING" and tok["tags"] == ["a"] and tok["timeoutAt"]
    listed = (await api.dev.get("/api/v1/waitpoints/tokens")).json()["data"]
    assert [t["id"] for t in listed] == [made["id"]]
    done = await api.dev.post(f"/api/v1/waitpoints/tokens/{made['id']}/complete",
                              json={"data": {"approved": True}})
    assert done.json() == {"success": True}
    # The first completion wins; a second one is answered, and changes nothing (C7).
    await api.dev.post(f"/api/v1/waitpoints/tokens/{made['id']}/complete", json={"data": 2})
    tok = (await api.dev.get(f"/api/v1/waitpoints/tokens/{made['id']}")).json()
    assert tok["status"] == "COMPLETED" and tok["output"] == {"approved": True}
    completed = (await api.dev.get("/api/v1/waitpoints/tokens",
                                   params={"status": "COMPLETED"})).json()["data"]
    assert [t["id"] for t in completed] == [made["id"]]
    assert (await api.dev.get("/api/v1/waitpoints/tokens",
                              params={"status": "WAITING"})).json()["data"] == []
    error(await api.dev.post("/api/v1/waitpoints/tokens", json={"timeout": "soon"}), 422,
          "validation_error", "timeout")
    error(await api.dev.get("/api/v1/waitpoints/tokens/waitpoint_nope"), 404,
          "token_not_found")
    error(await api.dev.post("/api/v1/waitpoints/tokens/waitpoint_nope/complete", json={}),
          404, "token_not_found")


async def test_token_request_key_returns_the_first_token(api: Api) -> None:
    """A create retried with its request key (its first response lost) gets the first
    token back, not a second pending one. Keys are per environment, and apart from the
    keys of trigger requests."""

    async def create(c: httpx.AsyncClient, key: str) -> dict[str, Any]:
        resp = await c.post("/api/v1/waitpoints/tokens", json={"timeout": "1h"},
                            headers={"Idempotency-Key": key})
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    first = await create(api.dev, "tok-req-1")
    retry = await create(api.dev, "tok-req-1")
    assert first["isCached"] is False
    assert retry == {**first, "isCached": True}
    other = await create(api.dev, "tok-req-2")
    assert other["id"] != first["id"]
    assert await trigger(api.dev, "srv-remote", {"n": 1})  # no request key
    await api.dev.post("/api/v1/tasks/srv-remote/trigger", json={"payload": {"n": 2}},
                       headers={"Idempotency-Key": "shared"})
    assert (await create(api.dev, "shared"))["isCached"] is False
    assert (await create(api.prod, "tok-req-1"))["id"] != first["id"]
    listed = (await api.dev.get("/api/v1/waitpoints/tokens")).json()["data"]
    assert len(listed) == 3


def test_http_client_retries_token_creation_under_one_request_key() -> None:
    """The client's side of the test above: when the first response is lost on its way
    back, the retry carries the first attempt's request key, which the server answers
    with the first token."""
    keys: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/waitpoints/tokens"
        keys.append(request.headers.get("Idempotency-Key", ""))
        if len(keys) == 1:
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(200, json={"id": "waitpoint_1", "isCached": True,
                                         "url": "http://outlast.test/callback/x"})

    http = HttpTransport("http://outlast.test", "tr_dev_test", retries=2)
    http._http = httpx.Client(base_url="http://outlast.test",
                              transport=httpx.MockTransport(server))
    try:
        token = http.create_token(3600.0, None, None, [])
    finally:
        http.close()
    assert token.id == "waitpoint_1"
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]


async def test_callback_url_signed_completes_once(api: Api) -> None:
    token = (await api.dev.post("/api/v1/waitpoints/tokens", json={})).json()
    run_id = await trigger(api.dev, "srv-stream", {"token": token["id"], "n": 2})
    await api.drain()
    assert (await api.dev.get(f"/api/v1/runs/{run_id}")).json()["status"] == "WAITING"

    path = urlsplit(token["url"]).path
    base, sig = path.rsplit("/", 1)
    other = (await api.dev.post("/api/v1/waitpoints/tokens", json={})).json()
    other_sig = urlsplit(other["url"]).path.rsplit("/", 1)[1]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for bad in (f"{base}/{flipped}", f"{base}/{sig[:-2]}", f"{base}/{other_sig}",
                f"{base}/{'é' * 64}", f"{base}/"):
        resp = await api.anon.post(bad, json={"x": 1})
        assert resp.status_code in (401, 404), (bad, resp.text)
        assert resp.json()["code"] in ("unauthorized", "not_found")
    forged = urlsplit(other["url"]).path.replace(other["id"], token["id"])
    error(await api.anon.post(forged, json={"x": 1}), 401, "unauthorized")
    assert (await api.dev.get(f"/api/v1/waitpoints/tokens/{token['id']}")).json()["status"] \
        == "WAITING"

    # No API key: the signed URL is the credential; the body is the output.
    ok = await api.anon.post(path, json={"approved": "yes"})
    assert ok.status_code == 200 and ok.json() == {"success": True}
    replayed = await api.anon.post(path, json={"approved": "no"})
    assert replayed.status_code == 200
    tok = (await api.dev.get(f"/api/v1/waitpoints/tokens/{token['id']}")).json()
    assert tok["status"] == "COMPLETED" and tok["output"] == {"approved": "yes"}
    await api.drain()
    run = (await api.dev.get(f"/api/v1/runs/{run_id}")).json()
    assert run["status"] == "COMPLETED"
    assert run["output"] == {"prepared": 20, "token": {"approved": "yes"}}
    # A body that is not JSON arrives as text.
    plain = (await api.dev.post("/api/v1/waitpoints/tokens", json={})).json()
    await api.anon.post(urlsplit(plain["url"]).path, content=b"status=ok",
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert (await api.dev.get(f"/api/v1/waitpoints/tokens/{plain['id']}")).json()["output"] \
        == "status=ok"


# -- queues -------------------------------------------------------------------------------


async def test_queues_list_pause_resume_limit(api: Api) -> None:
    await api.drain()  # a worker declares its queues
    queues = {q["name"]: q for q in (await api.dev.get("/api/v1/queues")).json()["data"]}
    assert queues["srv-limited"]["concurrencyLimit"] == 2
    paused = await api.dev.post("/api/v1/queues/srv-limited/pause", json={"action": "pause"})
    assert paused.json()["paused"] is True
    run_id = await trigger(api.dev, "srv-queued", None)
    await api.drain()
    d = (await api.dev.get(f"/api/v1/runs/{run_id}")).json()
    assert d["status"] == "QUEUED" and "paused" in d["why"]
    state = (await api.dev.get("/api/v1/queues/srv-limited/state")).json()
    assert state["queued"] == 1 and state["paused"] is True
    resumed = await api.dev.post("/api/v1/queues/srv-limited/pause", json={"action": "resume"})
    assert resumed.json()["paused"] is False
    await api.drain()
    assert (await api.dev.get(f"/api/v1/runs/{run_id}")).json()["status"] == "COMPLETED"

    limited = await api.dev.post("/api/v1/queues/srv-limited/concurrency", json={"limit": 5})
    assert limited.json()["concurrencyLimit"] == 5
    unlimited = await api.dev.post("/api/v1/queues/srv-limited/concurrency",
                                   json={"limit": None})
    assert "concurrencyLimit" not in unlimited.json()
    # Queue names with a slash (a task's default queue) work in the path.
    slash = await api.dev.post("/api/v1/queues/task/srv-order/pause", json={"action": "pause"})
    assert slash.status_code == 200 and slash.json()["name"] == "task/srv-order"
    error(await api.dev.post("/api/v1/queues/srv-limited/concurrency", json={"limit": -1}),
          422, "validation_error", "limit")
    error(await api.dev.post("/api/v1/queues/srv-limited/pause", json={"action": "stop"}),
          422, "validation_error", "action")
    error(await api.dev.post("/api/v1/queues/nope/pause", json={"action": "pause"}), 404,
          "queue_not_found", "name")


# -- limits -------------------------------------------------------------------------------


async def test_oversize_bodies_are_413_with_nothing_written(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = b'{"payload": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    resp = await api.dev.post("/api/v1/tasks/srv-remote/trigger", content=big,
                              headers={"content-type": "application/json"})
    error(resp, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        yield b'{"payload": "'
        for _ in range(30):
            yield b"x" * (100 * 1024)
        yield b'"}'

    resp = await api.dev.post("/api/v1/tasks/srv-remote/trigger", content=chunks(),
                              headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    error(resp, 413, "payload_too_large")

    # A task whose id says "batch" gets the ordinary limit, not the batch routes' one.
    resp = await api.dev.post("/api/v1/tasks/srv-batch-like/trigger", content=big,
                              headers={"content-type": "application/json"})
    error(resp, 413, "payload_too_large")

    # Under the body limit, over the payload limit (default 1 MiB): the payload is refused,
    # both for a task imported here and for a published one.
    payload = "y" * (1024 * 1024 + 10)
    resp = await api.dev.post("/api/v1/tasks/srv-child/trigger", json={"payload": payload})
    error(resp, 422, "validation_error", "payload")  # srv-child takes an int
    resp = await api.dev.post("/api/v1/tasks/srv-ledger/trigger",
                              json={"payload": {"pad": payload}})
    error(resp, 413, "payload_too_large", "payload")
    api.store.publish_tasks("dev", [TaskDef("srv-any", "task/srv-any", {}, {})])
    resp = await api.dev.post("/api/v1/tasks/srv-any/trigger", json={"payload": payload})
    error(resp, 413, "payload_too_large", "payload")

    # OUTLAST_MAX_PAYLOAD_BYTES lowers it.
    monkeypatch.setenv("OUTLAST_MAX_PAYLOAD_BYTES", "1000")
    async with api.client(api.keys["dev"], create_app(api.store, dashboard=False)) as c:
        error(await c.post("/api/v1/tasks/srv-any/trigger", json={"payload": "z" * 1500}),
              413, "payload_too_large", "payload")
        assert (await c.post("/api/v1/tasks/srv-any/trigger",
                             json={"payload": "z" * 500})).status_code == 200
    assert api.runs() == 1


async def test_batch_of_50000_items_in_one_request(api: Api) -> None:
    n = 50_000
    body = orjson.dumps({"items": [{"payload": {"sku": "s", "qty": i}} for i in range(n)]})
    started = time.perf_counter()
    resp = await api.dev.post("/api/v1/tasks/srv-order/batch", content=body,
                              headers={"content-type": "application/json",
                                       "Idempotency-Key": "big-batch"})
    took = time.perf_counter() - started
    assert resp.status_code == 200, resp.text[:500]
    out = resp.json()
    assert out["runCount"] == n and len({r["id"] for r in out["runs"]}) == n
    assert api.runs() == n
    print(f"\n[{api.store.backend}] batch of {n:,} items ({len(body) / 1e6:.1f} MB): "
          f"{took:.2f} s, {n / took:,.0f} runs/s")
    assert took < 60


# -- the event stream ---------------------------------------------------------------------


def parse_sse(text: str) -> list[tuple[str, Any]]:
    frames = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln and not ln.startswith(":")]
        if not lines:
            continue
        event = next(ln[7:] for ln in lines if ln.startswith("event: "))
        data = "".join(ln[6:] for ln in lines if ln.startswith("data: "))
        frames.append((event, orjson.loads(data)))
    return frames


LIFECYCLE = ["QUEUED", "EXECUTING", "WAITING", "QUEUED", "EXECUTING", "COMPLETED"]


def is_in_order(seen: list[str], path: list[str]) -> bool:
    """``seen`` is ``path`` with some states skipped (the stream polls)."""
    it = iter(path)
    return all(s in it for s in seen)


class Stream:
    """An SSE response read as the app sends it (httpx's ASGI transport would hand over
    the body only at the end), so a test can act on what the stream has said so far."""

    def __init__(self, app: FastAPI, path: str, key: str) -> None:
        self.app, self.path, self.key = app, path, key
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.frames: list[tuple[str, Any]] = []
        self._text = ""
        self._changed = asyncio.Event()

    async def run(self) -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": self.path,
            "raw_path": self.path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"outlast.test"),
                        (b"authorization", f"Bearer {self.key}".encode())],
            "server": ("outlast.test", 80), "client": ("127.0.0.1", 50000),
        }
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await never.wait()  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.headers = dict(message.get("headers", []))
            elif message["type"] == "http.response.body":
                self._text += message.get("body", b"").decode()
                *blocks, self._text = self._text.split("\n\n")
                self.frames += parse_sse("\n\n".join(blocks))
                self._changed.set()

        await self.app(scope, receive, send)

    def statuses(self) -> list[str]:
        return [d["status"] for k, d in self.frames if k == "status"]

    async def until(self, what: str, check: Any, timeout: float = 15.0) -> None:
        async def wait() -> None:
            while not check():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the stream never showed {what}: {self.frames}") from None


async def test_event_stream_delivers_changes_in_order_and_ends(api: Api) -> None:
    token = (await api.dev.post("/api/v1/waitpoints/tokens", json={})).json()
    run_id = await trigger(api.dev, "srv-stream", {"token": token["id"]})
    stream = Stream(api.app, f"/api/v1/runs/{run_id}/events", api.keys["dev"])
    reading = asyncio.create_task(stream.run())
    await stream.until("QUEUED", lambda: stream.statuses() == ["QUEUED"])
    await api.drain()  # the run executes its step, logs, sets metadata, waits on the token
    await stream.until("WAITING", lambda: "WAITING" in stream.statuses())
    await api.dev.post(f"/api/v1/waitpoints/tokens/{token['id']}/complete",
                       json={"data": "go"})
    await api.drain()  # → COMPLETED
    await asyncio.wait_for(reading, 15)

    assert stream.status == 200
    assert stream.headers[b"content-type"].startswith(b"text/event-stream")
    frames = stream.frames
    kinds = [k for k, _ in frames]
    statuses = stream.statuses()
    assert statuses[0] == "QUEUED" and "WAITING" in statuses and statuses[-1] == "COMPLETED"
    assert is_in_order(statuses, LIFECYCLE), statuses
    assert kinds[-2:] == ["status", "end"]
    assert frames[-1][1]["output"] == {"prepared": 10, "token": "go"}
    steps = [(d["key"], d["status"]) for k, d in frames if k == "step"]
    assert ("prepare", "done") in steps
    assert [d["message"] for k, d in frames if k == "log"] == ["waiting for the token"]
    assert [d for k, d in frames if k == "metadata"] == [{"phase": "waiting"},
                                                          {"phase": "done"}]
    # Nothing is said twice: one frame per change.
    assert len(steps) == len(set(steps))
    assert all(a != b for a, b in itertools.pairwise(statuses))
    error(await api.dev.get("/api/v1/runs/run_nope/events"), 404, "run_not_found")


def test_server_flags_default_to_port_8030(monkeypatch: pytest.MonkeyPatch) -> None:
    from outlast.cli import build_parser

    for name in ("OUTLAST_HOST", "OUTLAST_PORT"):
        monkeypatch.delenv(name, raising=False)
    server = build_parser().parse_args(["server"])
    assert (server.host, server.port) == ("0.0.0.0", 8030)
    dev = build_parser().parse_args(["dev"])
    assert (dev.host, dev.port) == ("127.0.0.1", 8030)
    monkeypatch.setenv("OUTLAST_PORT", "9000")
    assert build_parser().parse_args(["server", "--host", "127.0.0.1"]).port == 9000
