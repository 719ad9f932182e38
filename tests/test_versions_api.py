"""Versions over HTTP and on the dashboard (issue 19): the Versions page and the version on
a run's page, promote from both, migrate and lockToVersion over the API; both backends."""

from __future__ import annotations

import html
import re
import urllib.parse
from typing import Any

import httpx

from outlast import FakeClock, RunStatus
from outlast.client import Client
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store.base import Store
from outlast.worker import Worker
from tests.test_versions import quick, sleepy

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _api(store: Store) -> httpx.AsyncClient:
    key = create_key(store, "dev").secret
    app = create_app(store, dashboard=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://o.test",
                             headers={"Authorization": f"Bearer {key}"})


async def _parked_on_v1_with_only_v2_live(client: Client, store: Store) -> tuple[str, Worker]:
    v1 = Worker(store, tasks={t.id: t for t in (sleepy, quick)}, env="dev", version="v1")
    h = client.trigger(sleepy, {})
    await v1.run_until_idle()
    await v1.shutdown(grace=0)
    v2 = Worker(store, tasks={t.id: t for t in (sleepy, quick)}, env="dev", version="v2")
    await v2.start(background=False)
    return h.id, v2


async def test_the_versions_api_lists_promotes_migrates_and_pins_triggers(
    store: Store, client: Client, clock: FakeClock
) -> None:
    run_id, v2 = await _parked_on_v1_with_only_v2_live(client, store)
    async with _api(store) as api:
        rows = {r["version"]: r for r in (await api.get("/api/v1/versions")).json()["data"]}
        assert rows["v2"]["current"] and rows["v2"]["live_workers"] == 1
        assert rows["v1"]["locked_runs"] == {"WAITING": 1} and not rows["v1"]["retirable"]
        got = (await api.get(f"/api/v1/runs/{run_id}")).json()
        assert got["lockedToVersion"] == "v1"

        r = await api.post("/api/v1/tasks/ver-quick/trigger",
                           json={"payload": {}, "options": {"lockToVersion": "v9"}})
        assert r.status_code == 200, r.text
        assert client.retrieve(r.json()["id"]).version == "v9"
        bad = await api.post("/api/v1/tasks/ver-quick/trigger",
                             json={"payload": {}, "options": {"lockToVersion": "no spaces"}})
        assert bad.status_code == 422 and bad.json()["field"] == "options.lockToVersion"

        r = await api.post("/api/v1/versions/migrate", json={"from": "v1", "to": "v2"})
        assert r.json()["migrated"] == 1
        clock.advance(61)
        await v2.run_until_idle()
        assert client.retrieve(run_id).status == RunStatus.COMPLETED

        assert (await api.post("/api/v1/versions/v1/promote")).status_code == 200
        rows = {r["version"]: r for r in (await api.get("/api/v1/versions")).json()["data"]}
        assert rows["v1"]["current"] and rows["v1"]["pinned"] and not rows["v2"]["current"]
    await v2.shutdown(grace=0)


async def test_the_dashboard_shows_versions_the_runs_version_and_promotes(
    store: Store, client: Client, clock: FakeClock
) -> None:
    from outlast.server.dashboard import mount

    run_id, v2 = await _parked_on_v1_with_only_v2_live(client, store)
    clock.advance(61)
    await v2.run_until_idle()  # queued by its timer, locked to v1: v2 leaves it
    app = create_app(store, dashboard=False)
    mount(app, store, require_login=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as http:
        page = html.unescape((await http.get("/versions")).text)
        assert 'data-version="v1"' in page and 'data-version="v2"' in page
        assert "no live worker" in page and "QUEUED 1" in page
        run_page = await http.get(f"/runs/{run_id}")
        text = html.unescape(run_page.text)
        assert 'id="run-version"' in text and ">v1</a>" in text
        assert "locked to version v1: no live worker of v1 (1 run waiting on it)" in text
        csrf = CSRF.search(run_page.text)
        assert csrf is not None
        body: list[tuple[str, Any]] = [("version", "v1"), ("csrf", csrf.group(1)),
                                       ("env", "dev")]
        r = await http.post("/versions/promote", content=urllib.parse.urlencode(body),
                            headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 303
    assert store.pinned_version("dev") == "v1"
    await v2.shutdown(grace=0)
