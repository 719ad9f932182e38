"""The dashboard, server side, on both backends: pages render from real store state,
filters and the id cursor page correctly, actions do what they say in the selected
environment only, forged POSTs are refused, and a configured password is required."""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from outlast import Worker, wait
from outlast._clock import FakeClock
from outlast._errors import ValidationError
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server import create_app
from outlast.server.dashboard import mount
from outlast.store.base import Store, TaskDef
from tests.apps.dash_app import TASKS

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Dash:
    """A browser-ish client: keeps the session cookie and the page's CSRF token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.csrf = ""

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        r = await self.http.get(path, **kw)
        m = CSRF.search(r.text)
        if m:
            self.csrf = m.group(1)
        return r

    async def post(self, path: str, data: dict[str, Any] | list[tuple[str, str]],
                   *, env: str | None = "dev", csrf: bool = True) -> httpx.Response:
        pairs = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf:
            pairs.append(("csrf", self.csrf))
        if env is not None:
            pairs.append(("env", env))
        return await self.http.post(
            path, content=urllib.parse.urlencode(pairs),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )


def _app(store: Store, **kw: Any) -> FastAPI:
    app = create_app(store, dashboard=False)
    mount(app, store, **kw)
    return app


async def _client(app: FastAPI) -> Dash:
    transport = httpx.ASGITransport(app=app)
    return Dash(httpx.AsyncClient(transport=transport, base_url="http://testserver"))


@pytest.fixture
async def dash(store: Store) -> AsyncIterator[Dash]:
    d = await _client(_app(store, require_login=False))
    await d.get("/runs")
    yield d
    await d.http.aclose()


@pytest.fixture
async def worker(store: Store) -> AsyncIterator[Worker]:
    w = Worker(store, tasks=TASKS, env="dev", lease_seconds=600)
    yield w
    await w.shutdown()


def _text(r: httpx.Response) -> str:
    return html.unescape(r.text)


# -- pages ----------------------------------------------------------------------------------


async def test_every_page_renders_with_real_state(
    dash: Dash, client: Client, worker: Worker
) -> None:
    done = client.trigger("dash-pipeline", {"label": "a", "items": 3}, tags=["nightly"])
    failed = client.trigger("dash-boom", {})
    waiting = client.trigger("dash-approval", {"order": "A-1"})
    await worker.run_until_idle()

    r = await dash.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/runs"
    page = _text(await dash.get("/runs"))
    for run_id in (done.id, failed.id, waiting.id):
        assert run_id in page
    assert "nightly" in page and "COMPLETED" in page and "FAILED" in page

    r = await dash.get(f"/runs/{done.id}")
    page = _text(r)
    assert r.status_code == 200
    assert '"total": 6' in page  # the output
    for key in ("fetch", "transform", "store"):  # the timeline's step rows
        assert f'<span class="name">{key}</span>' in page
    assert "fetch done" in page  # a log line
    assert '"progress": 1.0' in page  # metadata

    page = _text(await dash.get(f"/runs/{failed.id}"))
    assert "card declined" in page and "Traceback" in page and "ValueError" in page

    page = _text(await dash.get(f"/runs/{waiting.id}"))
    assert "WAITING" in page and "waiting on token" in page
    assert 'data-token-approve="' in page  # the inline approve button

    for path, expect in [
        ("/tasks", "dash-pipeline"),
        ("/queues", "dash-held"),
        ("/waitpoints", waiting.id),
        ("/workers", worker.id),
        ("/test", "Payload schema"),
        ("/schedules", "Schedules"),
    ]:
        r = await dash.get(path)
        assert r.status_code == 200, path
        assert expect in _text(r), path

    r = await dash.get("/runs/run_nope")
    assert r.status_code == 404 and "Run not found" in r.text


async def test_security_headers_static_files_and_no_openapi_entries(dash: Dash) -> None:
    r = await dash.get("/runs")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    cookie = r.headers.get("set-cookie") or ""
    assert cookie == "" or "httponly" in cookie.lower()
    css = await dash.http.get("/dashboard-static/app.css")
    assert css.status_code == 200 and "prefers-color-scheme: dark" in css.text
    js = await dash.http.get("/dashboard-static/app.js")
    assert js.status_code == 200
    app = dash.http._transport.app  # type: ignore[attr-defined]
    in_schema = [r.path for r in app.routes if getattr(r, "include_in_schema", False)]
    # The API, and the public route of incoming webhooks (its signature is its key).
    assert in_schema and all(p.startswith(("/api/", "/hooks/")) for p in in_schema)


async def test_run_detail_live_endpoint_and_children(
    dash: Dash, client: Client, worker: Worker, store: Store
) -> None:
    handle = client.trigger("dash-parent", {})
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED
    children = client.list_runs(parent_id=run.id)
    assert len(children) == 2
    oldest_first = store.child_runs("dev", run.id)  # type: ignore[attr-defined]
    assert [c.id for c in oldest_first] == sorted(c.id for c in children)
    assert store.child_runs("prod", run.id) == []  # type: ignore[attr-defined]

    live = (await dash.get(f"/dashboard-api/runs/{run.id}")).json()
    assert live["done"] is True
    assert set(live["fragments"]) == {"run-head", "run-timeline", "run-details", "run-logs"}
    for c in children:
        assert f'href="/runs/{c.id}"' in live["fragments"]["run-timeline"]
    page = _text(await dash.get(f"/runs/{children[0].id}"))
    assert f'href="/runs/{run.id}" id="parent-link"' in page
    assert (await dash.get("/dashboard-api/runs/run_nope")).status_code == 404


async def test_attempts_show_failed_attempt_then_success(
    dash: Dash, client: Client, worker: Worker
) -> None:
    handle = client.trigger("dash-flaky", {})
    await worker.run_until_idle()
    page = _text(await dash.get(f"/runs/{handle.id}"))
    assert "first attempt fails" in page
    assert "Attempt 1" in page and "Attempt 2" in page
    assert "COMPLETED" in page
    # Attempt 1's error is under Attempts, its traceback collapsed; no run-level Error box.
    assert 'id="run-error"' not in page
    assert '<details id="attempt-1-trace">' in page


# -- the runs list --------------------------------------------------------------------------


async def test_filters_search_and_cursor_pages(
    dash: Dash, client: Client, store: Store, clock: FakeClock
) -> None:
    old = client.trigger("dash-child", 1, tags=["old"], idempotency_key="idem-old")
    clock.advance(3 * 3600)
    ids = [client.trigger("dash-child", i, tags=["bulk"]).id for i in range(120)]
    held = client.trigger("dash-held", {}, tags=["held"])

    async def rows(query: str) -> list[str]:
        r = await dash.get(f"/runs?{query}")
        assert r.status_code == 200
        return re.findall(r'<tr data-href="/runs/([^"]+)"', r.text)

    assert await rows("task=dash-held") == [held.id]
    assert await rows("queue=dash-held") == [held.id]
    assert await rows("tag=old") == [old.id]
    assert await rows(f"search={held.id}") == [held.id]
    assert await rows(f"search={held.id}&task=dash-child") == []  # other filters still apply
    assert await rows("search=run_nope") == []
    assert await rows("search=idem-old") == [old.id]
    assert await rows("range=1h&tag=old") == []  # created three hours ago
    assert await rows("range=6h&tag=old") == [old.id]
    assert len(await rows("status=QUEUED&status=COMPLETED")) == 50
    assert await rows("status=COMPLETED") == []

    # Pages by the id cursor: newest first, no overlap, nothing missed.
    seen: list[str] = []
    query = "tag=bulk"
    for _ in range(4):
        r = await dash.get(f"/runs?{query}")
        seen += re.findall(r'<tr data-href="/runs/([^"]+)"', r.text)
        m = re.search(r'href="/runs\?([^"]+)" rel="next"', r.text)
        if not m:
            break
        query = html.unescape(m.group(1))
        assert "before=" in query and "tag=bulk" in query
    assert seen == sorted(ids, reverse=True)

    live = (await dash.get("/dashboard-api/runs?task=dash-held")).json()
    assert held.id in live["fragments"]["run-rows"] and live["done"] is False
    bad = await dash.get("/runs?range=custom&from=yesterday")
    assert bad.status_code == 422 and "not a date" in bad.text


async def test_bulk_cancel_and_replay_the_filtered_set(
    dash: Dash, client: Client, store: Store
) -> None:
    held = [client.trigger("dash-held", {"i": i}, tags=["batch"]).id for i in range(5)]
    other = client.trigger("dash-child", 3).id

    r = await dash.post("/runs/bulk", {"action": "cancel", "tag": "batch"})
    assert r.status_code == 200 and "Cancel 5 runs?" in r.text
    assert all(i in r.text for i in held)  # the sample
    assert all(client.retrieve(i).status == RunStatus.QUEUED for i in held)  # not yet

    r = await dash.post("/runs/bulk", {"action": "cancel", "tag": "batch", "confirm": "1"})
    assert r.status_code == 303 and r.headers["location"] == "/runs?tag=batch"
    assert all(client.retrieve(i).status == RunStatus.CANCELED for i in held)
    assert client.retrieve(other).status == RunStatus.QUEUED
    assert "Canceled 5 runs." in _text(await dash.get("/runs?tag=batch"))

    r = await dash.post("/runs/bulk", {"action": "replay", "tag": "batch"})
    assert "Replay 5 runs?" in r.text
    r = await dash.post("/runs/bulk", {"action": "replay", "tag": "batch", "confirm": "1"})
    assert r.status_code == 303
    replays = [x for x in client.list_runs(tag="batch") if x.replayed_from]
    assert sorted(x.replayed_from or "" for x in replays) == sorted(held)
    assert all(x.status == RunStatus.QUEUED for x in replays)
    # The same path as the API and CLI: a bulk action, recorded with its counts.
    assert [(b.action, b.succeeded) for b in store.list_bulk_actions("dev")] == [
        ("replay", 5), ("cancel", 5)]

    nothing = await dash.post("/runs/bulk", {"action": "cancel", "status": "COMPLETED"})
    assert "Cancel 0 runs?" in nothing.text and "No runs match" in nothing.text


async def test_bulk_goes_on_from_where_a_request_stopped(
    dash: Dash, client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outlast import _bulk
    from outlast.server.dashboard import _actions

    client.batch_trigger("dash-child", list(range(30)), tags=["slow"])
    monkeypatch.setattr(_actions, "BULK_SECONDS", 0.0)  # one batch per request
    monkeypatch.setattr(_bulk, "DEFAULT_BATCH", 20)
    r = await dash.post("/runs/bulk", {"action": "cancel", "tag": "slow", "confirm": "1"})
    assert r.status_code == 303
    bulk = store.list_bulk_actions("dev")[0]
    assert (bulk.status, bulk.processed) == ("running", 20)
    assert f"outlast runs bulk resume {bulk.id}" in _text(await dash.get("/runs?tag=slow"))
    r = await dash.post("/runs/bulk", {"action": "cancel", "tag": "slow", "confirm": "1",
                                       "bulk": bulk.id})
    assert r.status_code == 303
    assert store.list_bulk_actions("dev")[0].succeeded == 30
    assert client.bulk_count("cancel", tag="slow") == 0


async def test_bulk_is_not_capped_at_1000(dash: Dash, client: Client) -> None:
    client.batch_trigger("dash-child", list(range(1100)), tags=["many"])
    r = await dash.post("/runs/bulk", {"action": "cancel", "tag": "many"})
    assert "Cancel 1100 runs?" in r.text
    r = await dash.post("/runs/bulk", {"action": "cancel", "tag": "many", "confirm": "1"})
    assert r.status_code == 303
    assert client.bulk_count("cancel", tag="many") == 0
    assert "Canceled 1100 runs." in _text(await dash.get("/runs?tag=many"))


# -- actions --------------------------------------------------------------------------------


async def test_cancel_and_replay_one_run(dash: Dash, client: Client, worker: Worker) -> None:
    await worker.run_until_idle()  # registers, declaring the dash-held queue's limit of 0
    held = client.trigger("dash-held", {"n": 1})
    page = _text(await dash.get(f"/runs/{held.id}"))
    assert "concurrency limit" in page  # why it has not started

    r = await dash.post(f"/runs/{held.id}/cancel", {})
    assert r.status_code == 303
    assert client.retrieve(held.id).status == RunStatus.CANCELED
    assert "canceled" in _text(await dash.get(f"/runs/{held.id}"))

    done = client.trigger("dash-pipeline", {"label": "x", "items": 2})
    await worker.run_until_idle()
    r = await dash.post(f"/runs/{done.id}/replay",
                        {"payload": '{"label": "edited", "items": 4}'})
    assert r.status_code == 303
    new_id = r.headers["location"].rsplit("/", 1)[1]
    new = client.retrieve(new_id)
    assert new.replayed_from == done.id and new.payload["label"] == "edited"

    bad = await dash.post(f"/runs/{done.id}/replay", {"payload": '{"label": "x", "items": 0}'})
    assert bad.status_code == 422 and "items" in _text(bad)
    broken = await dash.post(f"/runs/{done.id}/replay", {"payload": "{nope"})
    assert broken.status_code == 422 and "not valid JSON" in broken.text


async def test_queue_pause_resume_and_limit(dash: Dash, client: Client, store: Store) -> None:
    client.trigger("dash-child", 1)
    q = "task/dash-child"

    def state() -> dict[str, Any]:
        return next(x for x in store.list_queues("dev") if x["name"] == q)

    assert (await dash.post("/queues/pause", {"name": q, "action": "pause"})).status_code == 303
    assert state()["paused"]
    page = _text(await dash.get("/queues"))
    assert f"Queue {q} paused." in page and "Resume" in page
    await dash.post("/queues/pause", {"name": q, "action": "resume"})
    assert not state()["paused"]
    await dash.post("/queues/limit", {"name": q, "limit": "3"})
    assert state()["concurrency_limit"] == 3
    await dash.post("/queues/limit", {"name": q, "limit": ""})
    assert state()["concurrency_limit"] is None
    r = await dash.post("/queues/limit", {"name": q, "limit": "-1"})
    assert r.status_code == 422
    r = await dash.post("/queues/pause", {"name": "no-such-queue", "action": "pause"})
    assert r.status_code == 404
    assert "no-such-queue" not in [x["name"] for x in store.list_queues("dev")]


async def test_approve_a_token_resumes_the_waiting_run(
    dash: Dash, client: Client, worker: Worker
) -> None:
    handle = client.trigger("dash-approval", {"order": "R-9"})
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    token = run.metadata["token"]
    page = _text(await dash.get("/waitpoints"))
    assert token in page and handle.id in page

    r = await dash.post("/waitpoints/complete", {"id": token, "preset": "approve"})
    assert r.status_code == 303
    assert "1 waiting run resume" in _text(await dash.get("/waitpoints"))
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED and run.output == {"order": "R-9", "approved": True}

    again = await dash.post("/waitpoints/complete",
                            {"id": token, "preset": "", "data": '{"approved": false}'})
    assert again.status_code == 303
    assert "first completion wins" in _text(await dash.get("/waitpoints"))
    completed = _text(await dash.get("/waitpoints?show=completed"))
    assert token in completed and '{"approved": true}' in completed


async def test_token_buttons_show_and_send_what_the_task_set(
    dash: Dash, client: Client, worker: Worker
) -> None:
    default = client.trigger("dash-approval", {"order": "R-1"})
    custom = client.trigger("dash-shipping", {})
    await worker.run_until_idle()
    page = (await dash.get("/waitpoints")).text
    # Each button says what it sends: the default ones, and the task's own.
    assert 'Approve <code class="button-data">{&#34;approved&#34;: true}</code>' in page
    assert 'Ship it <code class="button-data">{&#34;ok&#34;: true}</code>' in page
    token = client.retrieve(custom.id).metadata["token"]
    r = await dash.post("/waitpoints/complete", {"id": token, "preset": "Ship it"})
    assert r.status_code == 303
    await worker.run_until_idle()
    assert client.retrieve(custom.id).output == "shipped"
    other = client.retrieve(default.id).metadata["token"]
    r = await dash.post("/waitpoints/complete", {"id": other, "preset": "Ship it"})
    assert r.status_code == 422  # not one of this token's buttons
    from outlast._token_buttons import buttons_json

    with pytest.raises(ValidationError, match="label"):
        buttons_json({"": {}})
    with pytest.raises(ValidationError, match="inside a task"):
        await wait.create_token(buttons={"Ok": {}})


async def test_test_page_validates_against_the_task_and_its_published_schema(
    dash: Dash, client: Client, store: Store
) -> None:
    # A task this process knows (pydantic type): every error is listed by field.
    r = await dash.post("/test", {"task": "dash-pipeline", "payload": '{"items": 0}'})
    assert r.status_code == 422
    errors = re.search(r'<ul class="field-error" id="payload-errors".*?</ul>', r.text, re.S)
    assert errors is not None
    assert "label" in errors.group(0) and "items" in errors.group(0)
    assert "{&#34;items&#34;: 0}" in r.text or '{"items": 0}' in _text(r)  # kept as typed

    r = await dash.post("/test", {"task": "dash-pipeline", "payload": "{oops"})
    assert r.status_code == 422 and "not valid JSON" in r.text

    # A task only published by a (remote) worker: checked against its JSON schema.
    schema = {"type": "object", "required": ["email"],
              "properties": {"email": {"type": "string"}, "n": {"type": "integer"}}}
    store.publish_tasks("dev", [TaskDef("dash-remote", "task/dash-remote", schema, {})])
    r = await dash.post("/test", {"task": "dash-remote", "payload": '{"n": "x"}'})
    assert r.status_code == 422
    page = _text(r)
    assert "'email' is a required property" in page and "is not of type 'integer'" in page
    page = _text(await dash.get("/test?task=dash-remote"))
    assert '"email": ""' in page  # a starting payload sketched from the schema

    r = await dash.post("/test", {"task": "dash-pipeline", "payload": '{"label": "t", "items": 2}',
                                  "tags": "ui, manual", "idempotency_key": "k1", "delay": ""})
    assert r.status_code == 303
    run = client.retrieve(r.headers["location"].rsplit("/", 1)[1])
    assert run.task_id == "dash-pipeline" and "ui" in run.tags
    assert run.idempotency_key == "k1"
    r = await dash.post("/test", {"task": "dash-nope", "payload": "{}"})
    assert r.status_code == 422 and "no task" in _text(r)


async def test_tasks_page_counts_and_duration_percentiles(
    dash: Dash, client: Client, store: Store
) -> None:
    ids = [client.trigger("dash-child", i).id for i in range(100)]
    sql = ("UPDATE runs SET status = 'COMPLETED', started_at = created_at, "
           "finished_at = created_at + :d WHERE id = :id")
    raw: Any = store
    with raw._transaction() as tx:
        for i, run_id in enumerate(ids, start=1):
            raw._raw(tx, sql, {"d": float(i), "id": run_id})
    stats = store.duration_percentiles("dev", store.now() - 3600)  # type: ignore[attr-defined]
    assert stats["dash-child"] == {"count": 100.0, "p50": 50.0, "p95": 95.0}
    assert store.duration_percentiles("dev", store.now() + 3600) == {}  # type: ignore[attr-defined]
    page = _text(await dash.get("/tasks"))
    assert "completed 100" in page and "50 s" in page and "1m 35s" in page


async def test_queue_keys_and_known_envs(store: Store, client: Client) -> None:
    prod = Client(store=store, env="prod")
    for key in ("acme", "acme", "globex"):
        client.trigger("dash-held", {}, concurrency_key=key)
    prod.trigger("dash-child", 1)
    assert store.queued_by_key("dev", "dash-held") == {"acme": 2, "globex": 1}  # type: ignore[attr-defined]
    assert {"dev", "prod"} <= set(store.known_envs())  # type: ignore[attr-defined]
    assert "dash-held" in store.queue_names("dev")  # type: ignore[attr-defined]
    assert "dash-held" not in store.queue_names("prod")  # type: ignore[attr-defined]


# -- environments, CSRF, login --------------------------------------------------------------


async def test_environment_selector_scopes_pages_and_actions(
    dash: Dash, client: Client, store: Store
) -> None:
    prod = Client(store=store, env="prod")
    in_prod = prod.trigger("dash-held", {})
    in_dev = client.trigger("dash-held", {})
    page = await dash.get("/runs")
    assert in_dev.id in page.text and in_prod.id not in page.text
    assert '<option value="prod">prod</option>' in page.text
    assert (await dash.get(f"/runs/{in_prod.id}")).status_code == 404

    r = await dash.post("/env", {"name": "prod", "next": f"/runs/{in_dev.id}"}, env=None)
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    page = await dash.get("/runs")
    assert in_prod.id in page.text and in_dev.id not in page.text

    # A form rendered for dev, posted after switching to prod (another tab), does nothing.
    r = await dash.post(f"/runs/{in_dev.id}/cancel", {}, env="dev")
    assert r.status_code == 409
    assert client.retrieve(in_dev.id).status == RunStatus.QUEUED
    # The dev run does not exist in prod either.
    r = await dash.post(f"/runs/{in_dev.id}/cancel", {}, env="prod")
    assert r.status_code == 404
    r = await dash.post("/env", {"name": "../etc"}, env=None)
    assert r.status_code == 422


async def test_forged_posts_are_refused(dash: Dash, client: Client, store: Store) -> None:
    run = client.trigger("dash-held", {})
    no_token = await dash.post(f"/runs/{run.id}/cancel", {}, csrf=False)
    assert no_token.status_code == 403
    wrong = await dash.post(f"/runs/{run.id}/cancel", {"csrf": "x" * 43}, csrf=False)
    assert wrong.status_code == 403
    # Another session's token (a page the attacker loaded) is worthless here.
    other = await _client(_app(store, require_login=False))
    await other.get("/runs")
    assert other.csrf != dash.csrf
    stolen = await dash.http.post(f"/runs/{run.id}/cancel",
                                  data={"csrf": other.csrf, "env": "dev"})
    assert stolen.status_code == 403
    # A cross-site request carries no cookie: no session, no token to match.
    fresh = httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(store, require_login=False)),
                              base_url="http://testserver")
    assert (await fresh.post(f"/runs/{run.id}/cancel",
                             data={"csrf": dash.csrf, "env": "dev"})).status_code == 403
    json_body = await dash.http.post(f"/runs/{run.id}/cancel", json={"csrf": dash.csrf})
    assert json_body.status_code == 415
    for path, data in [("/queues/pause", {"name": "dash-held", "action": "pause"}),
                       ("/waitpoints/complete", {"id": "x", "preset": "approve"}),
                       ("/test", {"task": "dash-held", "payload": "{}"}),
                       ("/runs/bulk", {"action": "cancel"})]:
        assert (await dash.post(path, data, csrf=False)).status_code == 403, path
    assert client.retrieve(run.id).status == RunStatus.QUEUED
    assert not next(q for q in store.list_queues("dev") if q["name"] == "dash-held")["paused"]
    await other.http.aclose()
    await fresh.aclose()


async def test_login_required_when_a_password_is_set(store: Store, client: Client) -> None:
    run = client.trigger("dash-held", {})
    d = await _client(_app(store, password="s3cret pass"))
    r = await d.get("/runs?task=dash-held")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fruns%3Ftask%3Ddash-held"
    assert (await d.get(f"/runs/{run.id}")).status_code == 303
    assert (await d.get("/dashboard-api/runs")).status_code == 401
    assert (await d.post(f"/runs/{run.id}/cancel", {})).status_code == 303  # to login
    assert client.retrieve(run.id).status == RunStatus.QUEUED

    page = await d.get("/login?next=/runs%3Ftask%3Ddash-held")
    assert page.status_code == 200 and 'type="password"' in page.text
    bad = await d.post("/login", {"password": "guess", "next": "/runs"}, env=None)
    assert bad.status_code == 401 and "Wrong password" in bad.text
    no_csrf = await d.post("/login", {"password": "s3cret pass"}, env=None, csrf=False)
    assert no_csrf.status_code == 403
    before = d.csrf
    ok = await d.post("/login", {"password": "s3cret pass", "next": "/runs?task=dash-held"},
                      env=None)
    assert ok.status_code == 303 and ok.headers["location"] == "/runs?task=dash-held"
    page = await d.get("/runs?task=dash-held")
    assert page.status_code == 200 and run.id in page.text
    assert d.csrf != before  # a new token once signed in
    # An open redirect is not possible through ?next=.
    again = await d.post("/login", {"password": "s3cret pass", "next": "//evil.example/"},
                         env=None)
    assert again.headers["location"] == "/runs"

    # A tampered cookie is no session.
    cookie = d.http.cookies.get("outlast_dashboard")
    assert cookie
    body, _, mac = cookie.partition(".")
    d.http.cookies.clear()
    d.http.cookies.set("outlast_dashboard", body + "." + mac[::-1])
    assert (await d.get("/runs")).status_code == 303
    await d.http.aclose()

    # Another app with another password does not accept this session.
    d2 = await _client(_app(store, password="s3cret pass"))
    await d2.get("/login")
    await d2.post("/login", {"password": "s3cret pass"}, env=None)
    assert (await d2.get("/runs")).status_code == 200
    d3 = await _client(_app(store, password="another"))
    d3.http.cookies.set("outlast_dashboard", d2.http.cookies["outlast_dashboard"])
    assert (await d3.get("/runs")).status_code == 303
    out = await d2.post("/logout", {}, env=None)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert (await d2.get("/runs")).status_code == 303
    await d2.http.aclose()
    await d3.http.aclose()


async def test_create_app_reads_the_login_settings_from_the_environment(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTLAST_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.delenv("OUTLAST_DASHBOARD_OPEN", raising=False)
    closed = await _client(create_app(store))
    r = await closed.get("/runs")
    assert r.status_code == 303
    page = await closed.get("/login")
    assert "no password is set" in page.text and 'type="password"' not in page.text
    await closed.http.aclose()

    monkeypatch.setenv("OUTLAST_DASHBOARD_OPEN", "1")
    opened = await _client(create_app(store))
    assert (await opened.get("/runs")).status_code == 200
    await opened.http.aclose()

    monkeypatch.setenv("OUTLAST_DASHBOARD_PASSWORD", "pw")  # a password always wins
    locked = await _client(create_app(store))
    assert (await locked.get("/runs")).status_code == 303
    await locked.get("/login")
    assert (await locked.post("/login", {"password": "pw"}, env=None)).status_code == 303
    assert (await locked.get("/runs")).status_code == 200
    await locked.http.aclose()


def test_dev_opens_the_dashboard_only_on_loopback() -> None:
    from outlast.cli import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("localhost") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5")
    assert not _is_loopback("example.com")


async def test_schedules_page_lists_every_schedule(dash: Dash, store: Store) -> None:
    from outlast import _schedule_crud

    r = await dash.get("/schedules")
    assert r.status_code == 200 and "No schedules in this environment" in _text(r)
    _schedule_crud.create(store, "dev", task="dash-pipeline", cron="0 9 * * MON",
                      timezone="Europe/Paris", external_id="org_42")
    page = _text(await dash.get("/schedules"))
    assert "dash-pipeline" in page and "0 9 * * MON" in page
    assert "Europe/Paris" in page and "org_42" in page and "never" in page
