"""Alerts and errors over HTTP, on SQLite and PostgreSQL: a rule created over the API shows
its secret once; the errors endpoint lists groups and resolves them; another environment
sees neither; bad input is a 422 naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from outlast import Retry, Worker, task
from outlast.client import Client
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store.base import Store

# Rules seal their signing secrets: every test here has a key (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("encryption_key")


@task(id="api-err", retry=Retry(max_attempts=1))
async def api_err(payload: dict[str, Any]) -> None:
    raise LookupError(f"invoice {payload['n']} missing")


@pytest.fixture
async def http(store: Store) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    app = create_app(store, dashboard=False)
    clients = {
        env: httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://outlast.test",
            headers={"Authorization": f"Bearer {create_key(store, env).secret}"},
        )
        for env in ("dev", "prod")
    }
    yield clients
    for c in clients.values():
        await c.aclose()


async def test_alert_rules_over_http(http: dict[str, httpx.AsyncClient], store: Store) -> None:
    dev = http["dev"]
    made = await dev.post("/api/v1/alerts", json={
        "on": "queue.backlog", "webhook": "https://hooks.example.com/x", "queue": "emails",
        "olderThan": "5m", "format": "slack"})
    assert made.status_code == 200, made.text
    rule = made.json()
    assert rule["secret"].startswith("whsec_") and rule["olderThan"] == 300
    listed = (await dev.get("/api/v1/alerts")).json()["data"]
    assert [r["id"] for r in listed] == [rule["id"]]
    assert "secret" not in listed[0]
    assert (await http["prod"].get("/api/v1/alerts")).json()["data"] == []
    assert (await http["prod"].delete(f"/api/v1/alerts/{rule['id']}")).status_code == 404
    bad = await dev.post("/api/v1/alerts", json={"on": "run.exploded", "webhook": "https://x"})
    assert bad.status_code == 422 and bad.json()["field"] == "on"
    bad = await dev.post("/api/v1/alerts", json={"on": "run.failed", "webhook": "https://x",
                                                 "olderThan": "soon"})
    assert bad.status_code == 422 and bad.json()["field"] == "olderThan"
    store.raise_alert("dev", "queue.backlog", {"queue": "emails"}, queue="emails")
    got = (await dev.get(f"/api/v1/alerts/{rule['id']}/deliveries")).json()["data"]
    assert [d["status"] for d in got] == ["pending"]
    assert (await dev.get("/api/v1/alerts/deliveries")).json()["data"] == got
    assert (await dev.delete(f"/api/v1/alerts/{rule['id']}")).json()["deleted"] is True
    assert (await dev.get("/api/v1/alerts")).json()["data"] == []


async def test_errors_over_http(
    http: dict[str, httpx.AsyncClient], store: Store, client: Client,
    workers: Callable[..., Worker],
) -> None:
    for n in range(5):
        client.trigger(api_err, {"n": n})
    await workers(api_err, scheduler=False).run_until_idle()
    store.scan_failures()
    dev = http["dev"]
    [group] = (await dev.get("/api/v1/errors")).json()["data"]
    assert group["count"] == 5 and group["message"] == "invoice <n> missing"
    detail = (await dev.get(f"/api/v1/errors/{group['fingerprint']}")).json()
    assert detail["tasks"] == {"api-err": 5}
    assert (await http["prod"].get("/api/v1/errors")).json()["data"] == []
    gone = await http["prod"].post(f"/api/v1/errors/{group['fingerprint']}/resolve")
    assert gone.status_code == 404
    done = await dev.post(f"/api/v1/errors/{group['fingerprint']}/resolve")
    assert done.json()["status"] == "resolved"
    resolved = (await dev.get("/api/v1/errors", params={"status": "resolved"})).json()["data"]
    assert [g["fingerprint"] for g in resolved] == [group["fingerprint"]]
