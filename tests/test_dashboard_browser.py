"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
`outlast dev` process (server + worker on SQLite): trigger from the Test page, watch the
run complete and its timeline fill in, approve a token, cancel a queued run, filter.

Screenshots go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast.client import Client
from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "test-artifacts" / "dashboard"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, base: str, db_url: str) -> None:
        self.base = base
        self.db_url = db_url

    def client(self) -> Client:
        return Client(self.db_url, env="dev")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("dash-dev")
    port = _free_port()
    db_url = f"sqlite:///{work}/outlast.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    env["PYTHONPATH"] = str(ROOT)
    with open(work / "dev.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "outlast", "dev", "--no-reload", "--app",
             "tests.apps.dash_app", "--database-url", db_url, "--host", "127.0.0.1",
             "--port", str(port), "--shutdown-grace", "1", "--no-life-lock"],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/api/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("outlast dev did not start:\n" + (work / "dev.log").read_text())
        time.sleep(0.1)
    try:
        yield Server(base, db_url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test does)",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900},
                                  base_url=server.base, color_scheme="light")
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # Console errors but the expected 4xx answers (a refused payload answers 422).
    pg.on("console", lambda m: errors.append(m.text)
          if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    yield pg
    context.close()
    assert errors == [], errors  # no script errors, no CSP violations


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _trigger_from_test_page(page: Any, task: str, payload: str) -> str:
    page.goto(f"/test?task={task}")
    page.fill("#payload", payload)
    page.click("#run-test")
    page.wait_for_url(re.compile(r"/runs/run_\w+$"))
    return str(page.url.rsplit("/", 1)[1])


def test_trigger_from_the_test_page_and_watch_the_run_complete(page: Any) -> None:
    expect = _expect()
    page.goto("/test")
    page.select_option("#test-task-pick", "dash-pipeline")  # submits itself
    page.wait_for_url(re.compile(r"/test\?task=dash-pipeline"))
    expect(page.locator("#test-schema")).to_contain_text('"label"')

    # A payload the task's type refuses: the errors show next to the payload.
    page.fill("#payload", '{"label": "nightly", "items": 0}')
    page.click("#run-test")
    expect(page.locator("#payload-errors")).to_contain_text("items")
    expect(page.locator("#payload")).to_have_value('{"label": "nightly", "items": 0}')
    page.screenshot(path=SHOTS / "test-page-errors.png")

    page.fill("#payload", '{"label": "nightly", "items": 3, "step_ms": 600}')
    page.click("#run-test")
    page.wait_for_url(re.compile(r"/runs/run_\w+$"))
    status = page.locator("#run-status")
    expect(page.locator(".flash")).to_contain_text("Triggered dash-pipeline")
    # Live: the page follows the run without a reload, and the timeline fills in.
    expect(status).to_have_attribute("data-status", "EXECUTING", timeout=10_000)
    expect(page.locator(".gantt-row.kind-step").first).to_be_visible(timeout=10_000)
    page.screenshot(path=SHOTS / "run-live.png", full_page=True)
    expect(status).to_have_attribute("data-status", "COMPLETED", timeout=15_000)
    expect(page.locator(".gantt-row.kind-step .name")).to_have_text(
        ["fetch", "transform", "store"])
    expect(page.locator("#run-output")).to_contain_text('"total": 6')
    expect(page.locator("#run-logs")).to_contain_text("transform done")
    expect(page.locator("#run-metadata")).to_contain_text('"progress": 1.0')
    expect(page.locator(".live")).to_have_count(0)
    page.screenshot(path=SHOTS / "run-completed.png", full_page=True)


def test_approve_a_pending_token_and_the_run_resumes(page: Any) -> None:
    expect = _expect()
    run_id = _trigger_from_test_page(page, "dash-approval", '{"order": "A-7"}')
    expect(page.locator("#run-status")).to_have_attribute("data-status", "WAITING",
                                                          timeout=10_000)
    expect(page.locator("#run-why")).to_contain_text("waiting on token")

    page.goto("/waitpoints")
    card = page.locator("article.token", has=page.locator(f'a[href="/runs/{run_id}"]'))
    expect(card).to_have_count(1)
    expect(card).to_contain_text("order:A-7")
    page.screenshot(path=SHOTS / "waitpoints.png", full_page=True)
    card.locator('button[value="Approve"]').click()  # the default buttons' labels
    expect(page.locator(".flash")).to_contain_text("1 waiting run resume")

    page.goto(f"/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "COMPLETED",
                                                          timeout=10_000)
    expect(page.locator("#run-output")).to_contain_text('"approved": true')
    expect(page.locator(".gantt-row.kind-token")).to_contain_text("completed")


def test_cancel_a_queued_run(page: Any) -> None:
    expect = _expect()
    run_id = _trigger_from_test_page(page, "dash-held", "{}")
    status = page.locator("#run-status")
    expect(status).to_have_attribute("data-status", "QUEUED")
    expect(page.locator("#run-why")).to_contain_text("concurrency limit")
    page.on("dialog", lambda d: d.accept())  # "Cancel run …?"
    page.click("#cancel-run")
    expect(page.locator(".flash")).to_contain_text(f"Run {run_id} canceled")
    expect(status).to_have_attribute("data-status", "CANCELED")


def test_filter_the_runs_list_and_see_new_runs_arrive(page: Any, server: Server) -> None:
    expect = _expect()
    client = server.client()
    try:
        done = client.trigger("dash-child", 21, tags=["filter-me"])
        client.wait_for_run(done.id, timeout=10)
        held = client.trigger("dash-held", {}, tags=["filter-me"])
    finally:
        client.close()

    page.goto("/runs")
    page.click("label.pill:has-text('completed')")
    page.fill('input[name="tag"]', "filter-me")
    page.click("#run-filters button.primary")
    page.wait_for_url(re.compile(r"status=COMPLETED"))
    rows = page.locator("#run-rows tr[data-status]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(done.id)
    expect(rows.first).to_have_attribute("data-status", "COMPLETED")

    page.goto("/runs")
    page.select_option('select[name="task"]', "dash-held")
    page.click("#run-filters button.primary")
    statuses = page.locator("#run-rows tr[data-status]")
    expect(statuses.first).to_be_visible()
    assert set(statuses.evaluate_all("rs => rs.map(r => r.dataset.status)")) <= {
        "QUEUED", "CANCELED"}
    expect(page.locator(f'#run-rows tr[data-href="/runs/{held.id}"]')).to_have_count(1)

    page.fill('input[name="search"]', held.id)
    page.click("#run-filters button.primary")
    expect(page.locator("#run-rows tr[data-status]")).to_have_count(1)

    # The list is live: a run triggered elsewhere appears without a reload.
    page.goto("/runs?tag=filter-me")
    expect(page.locator("#run-rows tr[data-status]")).to_have_count(2)
    client = server.client()
    try:
        late = client.trigger("dash-held", {}, tags=["filter-me"])
    finally:
        client.close()
    expect(page.locator(f'#run-rows tr[data-href="/runs/{late.id}"]')).to_have_count(
        1, timeout=8_000)
    page.screenshot(path=SHOTS / "runs.png", full_page=True)


def test_pages_in_dark_mode(browser: Any, server: Server) -> None:
    context = browser.new_context(viewport={"width": 1360, "height": 900},
                                  base_url=server.base, color_scheme="dark")
    pg = context.new_page()
    try:
        for name in ("runs", "tasks", "queues", "workers"):
            pg.goto(f"/{name}")
            pg.screenshot(path=SHOTS / f"{name}-dark.png", full_page=True)
        pg.goto("/runs?task=dash-pipeline")
        pg.click("#run-rows tr[data-status] td:nth-child(2)")  # a whole row opens its run
        pg.wait_for_url(re.compile(r"/runs/run_\w+$"))
        pg.screenshot(path=SHOTS / "run-dark.png", full_page=True)
        bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg != "rgb(255, 255, 255)"
    finally:
        context.close()


def test_a_signed_github_webhook_shows_on_the_webhooks_page(
    page: Any, server: Server, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import hashlib
    import hmac
    import json

    from outlast.cli import main

    expect = _expect()
    # outlast dev made the encryption key beside its database; the CLI finds it there.
    db_file = Path(server.db_url.removeprefix("sqlite:///"))
    assert (db_file.parent / "encryption-key").exists()
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY", raising=False)
    monkeypatch.setenv("GH_SECRET", "browser-webhook-secret")
    assert main(["webhooks", "create", "gh-browser", "--scheme", "github", "--secret-env",
                 "GH_SECRET", "--event", "github.{event}", "--database-url", server.db_url,
                 "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    body = b'{"ref": "refs/heads/main", "commits": []}'
    mac = hmac.new(b"browser-webhook-secret", body, hashlib.sha256).hexdigest()
    r = httpx.post(f"{server.base}/hooks/{created['id']}", content=body, headers={
        "X-Hub-Signature-256": f"sha256={mac}", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-browser", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    page.goto("/webhooks")
    expect(page.locator(".webhook-row", has_text="gh-browser")).to_contain_text("github.{event}")
    row = page.locator(".delivery-row", has_text="d-browser")
    expect(row).to_contain_text("published")
    page.screenshot(path=SHOTS / "webhooks.png", full_page=True)
    row.locator("a.event-link").click()
    page.wait_for_url(re.compile(r"/events\?name=github\.push#event-"))
    expect(page.locator('[id="event-webhook%3Agh-browser%3Ad-browser"]')).to_be_visible()
