"""The dashboard's errors and alerts pages, on SQLite and PostgreSQL: a failure shows in
its group with its count, tasks and a sample run; resolve and reopen from the page; the
alerts page lists rules with their deliveries and each delivery's attempts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from outlast import Worker
from outlast._alerts import Sender, create_rule
from outlast.client import Client
from outlast.store.base import Store
from tests.apps.dash_app import TASKS
from tests.test_dashboard import Dash, _app, _client, _text

# Rules seal their signing secrets: every test here has a key (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("encryption_key")


@pytest.fixture
async def dash(store: Store) -> AsyncIterator[Dash]:
    d = await _client(_app(store, require_login=False))
    await d.get("/runs")
    yield d
    await d.http.aclose()


async def test_errors_and_alerts_pages(dash: Dash, client: Client, store: Store) -> None:
    rule, _ = create_rule(store, store.clock, "dev", event="run.failed",
                          webhook_url="http://127.0.0.1:9/unreachable")
    failed = [client.trigger("dash-boom", {}).id for _ in range(3)]
    worker = Worker(store, tasks=TASKS, env="dev", scheduler=False)
    try:
        await worker.run_until_idle()
    finally:
        await worker.shutdown()
    store.scan_failures()
    Sender(store, store.clock).send_due()  # nobody listens: one failed attempt each

    page = _text(await dash.get("/errors"))
    [group] = store.list_error_groups("dev")
    assert group.fingerprint in page and "ValueError" in page and ">3<" in page
    detail = await dash.get(f"/errors/{group.fingerprint}")
    assert detail.status_code == 200
    text = _text(detail)
    assert "dash-boom · 3" in text and group.sample_run_id in failed
    assert group.sample_run_id in text
    r = await dash.post("/errors/status", {"fingerprint": group.fingerprint,
                                           "action": "resolve"})
    assert r.status_code == 303
    assert store.list_error_groups("dev")[0].status == "resolved"
    assert "Error group resolved." in _text(await dash.get(f"/errors/{group.fingerprint}"))
    await dash.post("/errors/status", {"fingerprint": group.fingerprint, "action": "reopen"})
    assert store.list_error_groups("dev")[0].status == "open"
    assert (await dash.get("/errors/nope")).status_code == 404

    page = _text(await dash.get("/alerts"))
    assert rule.id in page and "run.failed" in page
    assert page.count("#1 ") == 3 and "ConnectError" in page
    assert "whsec_" not in page
