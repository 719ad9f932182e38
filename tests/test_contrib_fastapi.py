"""outlast.contrib.fastapi: the lifespan opens the client (and an embedded worker that
executes what handlers trigger), the dependency hands it to handlers, and the mounted
dashboard answers under the app's path, behind the app's own auth, with its links there."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from outlast import step, task
from outlast.contrib.fastapi import Outlast, OutlastClient
from outlast.runs import RunStatus


@task(id="fastapi-greet")
async def greet(payload: dict[str, str]) -> str:
    return str(await step.run("greet", lambda: f"hello {payload['name']}"))


def make_app(db_url: str, **options: Any) -> tuple[FastAPI, Outlast]:
    outlast = Outlast(db_url, env="dev", tasks=[greet], **options)
    app = FastAPI(lifespan=outlast.lifespan)

    def staff_only(request: Request) -> bool:
        if "x-user" not in request.headers:
            raise HTTPException(401, "log in first")
        return request.headers["x-user"] == "staff"

    outlast.mount(app, "/admin/jobs", auth=staff_only)

    @app.post("/greet/{name}")
    async def create(name: str, client: OutlastClient) -> dict[str, str]:
        handle = await client.trigger(greet, {"name": name})
        return {"run_id": handle.id}

    return app, outlast


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan entered, as a server would run it."""
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://app"
    ) as http:
        yield http


async def test_a_handler_triggers_and_the_embedded_worker_runs_it(db_url: str) -> None:
    app, outlast = make_app(db_url, worker=True)
    async with serving(app) as http:
        run_id = (await http.post("/greet/ada")).json()["run_id"]
        run = await outlast.client.wait_for_run(run_id, timeout=20)
        assert run.status == RunStatus.COMPLETED and run.output == "hello ada"
        assert outlast.worker is not None
    assert outlast.worker is None  # stopped with the app


async def test_without_a_worker_the_run_stays_queued(db_url: str) -> None:
    app, outlast = make_app(db_url)
    async with serving(app) as http:
        run_id = (await http.post("/greet/bob")).json()["run_id"]
        assert outlast.client.sync.retrieve(run_id).status == RunStatus.QUEUED


async def test_the_mounted_dashboard_is_behind_the_apps_auth_with_its_links_under_the_path(
    db_url: str,
) -> None:
    app, _ = make_app(db_url)
    async with serving(app) as http:
        await http.post("/greet/cy")
        assert (await http.get("/admin/jobs/runs")).status_code == 401
        guest = await http.get("/admin/jobs/runs", headers={"x-user": "guest"})
        assert guest.status_code == 403

        page = await http.get("/admin/jobs/runs", headers={"x-user": "staff"})
        assert page.status_code == 200
        assert "fastapi-greet" in page.text
        assert 'href="/admin/jobs/runs' in page.text
        assert 'href="/runs' not in page.text and 'src="/dashboard-static' not in page.text
        css = await http.get("/admin/jobs/dashboard-static/app.css",
                             headers={"x-user": "staff"})
        assert css.status_code == 200

        home = await http.get("/admin/jobs/", headers={"x-user": "staff"},
                              follow_redirects=False)
        assert home.headers["location"].startswith("/admin/jobs/runs")
        health = await http.get("/admin/jobs/api/v1/health", headers={"x-user": "staff"})
        assert health.json()["ok"] is True
        # The API keeps its secret keys, whoever the app's auth lets in.
        assert (await http.get("/admin/jobs/api/v1/runs",
                         headers={"x-user": "staff"})).status_code == 401


async def test_callers_with_their_own_credential_pass_the_apps_auth_and_meet_theirs(
    db_url: str,
) -> None:
    """A provider posting to an incoming webhook and a service posting to a token's
    callback URL are not users of the host app: its auth would refuse them all. They
    reach outlast's own checks (signature, HMAC), and nothing else does."""
    from outlast.waitpoints import signature

    app, outlast = make_app(db_url)
    async with serving(app) as http:
        store = outlast.client.sync.store
        token = outlast.client.sync.create_token()
        base = "/admin/jobs/api/v1/waitpoints/tokens"
        forged = await http.post(f"{base}/{token.id}/callback/{'0' * 64}", json={"ok": 1})
        assert forged.status_code in (401, 403, 404) and "log in" not in forged.text
        sig = signature(store, token.id)
        done = await http.post(f"{base}/{token.id}/callback/{sig}", json={"ok": 1})
        assert done.status_code == 200, done.text
        completed = outlast.client.sync.get_token(token.id)
        assert (completed.status, completed.output) == ("completed", {"ok": 1})

        unknown = await http.post("/admin/jobs/hooks/wh_nope", content=b"{}")
        assert unknown.status_code == 404 and "log in" not in unknown.text
        # Everything else is still the host app's to admit.
        assert (await http.get(f"{base}/{token.id}/callback/{sig}")).status_code == 401
        assert (await http.post("/admin/jobs/api/v1/tasks/x/trigger")).status_code == 401
        assert (await http.get("/admin/jobs/hooks/wh_nope")).status_code == 401


async def test_the_dependency_says_when_the_lifespan_is_missing() -> None:
    app = FastAPI()

    @app.get("/x")
    async def x(client: OutlastClient) -> str:
        return "unreachable"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a"
                                 ) as http:
        with pytest.raises(Exception, match="lifespan"):
            await http.get("/x")


async def test_a_dashboard_form_posts_through_the_mount(db_url: str) -> None:
    app, outlast = make_app(db_url)
    staff = {"x-user": "staff"}
    async with serving(app) as http:
        run_id = (await http.post("/greet/di")).json()["run_id"]
        page = (await http.get(f"/admin/jobs/runs/{run_id}", headers=staff)).text
        assert f'action="/admin/jobs/runs/{run_id}/replay"' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        answer = await http.post(f"/admin/jobs/runs/{run_id}/replay", headers=staff,
                                 data={"csrf": csrf.group(1)}, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/admin/jobs/runs/")
        replays = [r for r in await outlast.client.list_runs() if r.replayed_from == run_id]
        assert len(replays) == 1
