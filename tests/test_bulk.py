"""Bulk actions: cancel or replay every run matching a filter, in batches, resumable,
never twice, past the dashboard's old 1,000 cap; through the store, Client (sync, async
and over HTTP), the HTTP API and the CLI, on SQLite and PostgreSQL. The crash test kills
`outlast runs bulk replay` with SIGKILL mid-way and resumes it: every matching run is
replayed exactly once."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast import _bulk
from outlast._errors import BulkActionNotFound, ValidationError
from outlast.client import AsyncClient, Client
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import Store
from tests.apps import bulk_app

ROOT = Path(__file__).resolve().parent.parent


def _seed(client: Client, n_a: int, n_b: int = 0, tag: str = "org:1") -> list[str]:
    ids = [h.id for h in client.batch_trigger(bulk_app.bulk_a, [{"i": i} for i in range(n_a)],
                                              tags=[tag])]
    if n_b:
        client.batch_trigger(bulk_app.bulk_b, [{"i": i} for i in range(n_b)])
    return ids


def _statuses(store: Store, task_id: str) -> collections.Counter[str]:
    return collections.Counter(str(r.status) for r in _all(store, task_id))


def _all(store: Store, task_id: str | None = None) -> list[Any]:
    out: list[Any] = []
    before = None
    while True:
        page = store.list_runs("dev", task_id=task_id, limit=1000, before=before)
        out += page
        if len(page) < 1000:
            return out
        before = page[-1].id


def test_cancel_in_batches_past_1000_with_dry_run_and_progress(client: Client,
                                                               store: Store) -> None:
    _seed(client, 1203, 40)
    assert client.bulk_count("cancel", task="bulk-a") == 1203
    assert client.bulk_count("replay", task="bulk-b") == 40
    seen: list[int] = []
    bulk = client.bulk_cancel(task="bulk-a", batch_size=500,
                              on_progress=lambda b: seen.append(b.processed))
    assert bulk.status == "completed" and bulk.total == 1203
    assert (bulk.processed, bulk.succeeded, bulk.skipped) == (1203, 1203, 0)
    assert seen == [500, 1000, 1203, 1203]  # the last call finds nothing more: completed
    assert _statuses(store, "bulk-a") == {"CANCELED": 1203}
    assert _statuses(store, "bulk-b") == {"QUEUED": 40}  # outside the filter
    # Resuming a finished action acts on nothing.
    again = client.resume_bulk(bulk.id)
    assert (again.processed, again.succeeded) == (1203, 1203)
    assert client.bulk_count("cancel", task="bulk-a") == 0


def test_replay_each_once_and_never_its_own_replays(client: Client, store: Store) -> None:
    originals = _seed(client, 30, tag="org:7")
    _seed(client, 5, tag="org:8")
    bulk = client.bulk_replay(tag="org:7", batch_size=7)
    assert (bulk.status, bulk.total, bulk.succeeded) == ("completed", 30, 30)
    replays = [r for r in _all(store, "bulk-a") if r.replayed_from]
    # The replays carry the tag too, and are newer than the action's bound: not re-replayed.
    assert sorted(r.replayed_from for r in replays) == sorted(originals)
    assert all("org:7" in r.tags for r in replays)


def test_filters_status_tag_queue_and_time(client: Client, store: Store, clock: Any) -> None:
    _seed(client, 3, tag="t:old")
    clock.advance(3600)
    start = store.now()
    _seed(client, 4, tag="t:new")
    assert client.bulk_count("replay", created_from=start) == 4
    assert client.bulk_count("replay", created_to=start - 1) == 3
    assert client.bulk_count("replay", queue="task/bulk-a") == 7
    assert client.bulk_count("replay", queue="nope") == 0
    client.cancel(_all(store, "bulk-a")[0].id)
    assert client.bulk_count("replay", status="CANCELED") == 1
    assert client.bulk_count("cancel") == 6  # cancel covers runs that have not ended


def test_bad_filters_name_the_field(client: Client) -> None:
    with pytest.raises(ValidationError) as e:
        client.bulk_count("cancel", status="COMPLETED")
    assert e.value.field == "status"
    with pytest.raises(ValidationError) as e:
        client.bulk_count("replay", status="DONE")
    assert e.value.field == "status"
    assert client.bulk_count("replay", version="v2") == 0  # runs locked to v2: none (C11)
    with pytest.raises(ValidationError) as e:
        client.bulk_count("delete")
    assert e.value.field == "action"
    with pytest.raises(ValidationError) as e:
        client.bulk_count("replay", created_from="yesterday")
    assert e.value.field == "created_from"
    with pytest.raises(BulkActionNotFound):
        client.get_bulk("bulk_nope")


def test_a_stale_cursor_commits_nothing(client: Client, store: Store) -> None:
    """Two runners of one action: the second to commit the same batch writes nothing."""
    _seed(client, 10)
    bulk = client.start_bulk("replay", task="bulk-a")
    first = _bulk.run_batch(store, bulk, 4)
    assert first.processed == 4
    runs = store.bulk_candidates(bulk, 4)  # the batch as the slow runner read it
    from outlast.store._bulk_base import BulkBatch

    stale = BulkBatch(last_id=runs[-1].id, covered=4, replays=[])
    assert store.commit_bulk_batch(bulk, stale) is None
    # A runner holding the stale action commits nothing and reads where the action got to.
    assert _bulk.run_batch(store, bulk, 4).processed == 4
    done = client.resume_bulk(bulk.id)
    assert (done.processed, done.succeeded) == (10, 10)
    assert len([r for r in _all(store, "bulk-a") if r.replayed_from]) == 10


def test_abort_stops_after_the_committed_batches(client: Client, store: Store) -> None:
    _seed(client, 9)
    bulk = client.start_bulk("cancel", task="bulk-a")
    _bulk.run_batch(store, bulk, 4)
    aborted = client.abort_bulk(bulk.id)
    assert aborted.status == "aborted"
    assert client.resume_bulk(bulk.id).processed == 4
    assert _statuses(store, "bulk-a") == {"CANCELED": 4, "QUEUED": 5}
    assert [b.id for b in client.list_bulk()] == [bulk.id]


async def test_async_client(client: Client, store: Store) -> None:
    _seed(client, 6)
    ac = AsyncClient(client)
    assert await ac.bulk_count("cancel", task="bulk-a") == 6
    bulk = await ac.bulk_cancel(task="bulk-a", batch_size=5)
    assert (bulk.status, bulk.succeeded) == ("completed", 6)
    assert (await ac.get_bulk(bulk.id)).succeeded == 6


class _SyncAsgi(httpx.BaseTransport):
    """The sync client's requests, served by the app in-process (no sockets)."""

    def __init__(self, app: Any) -> None:
        self.asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def go() -> httpx.Response:
            request.read()
            resp = await self.asgi.handle_async_request(request)
            return httpx.Response(resp.status_code, headers=resp.headers,
                                  content=await resp.aread())

        return asyncio.run(go())


@pytest.fixture
def http_client(store: Store) -> Iterator[Client]:
    key = create_key(store, "dev").secret
    client = Client(api_url="http://outlast.test", secret_key=key, env="dev")
    assert client._http is not None
    client._http._http.close()
    client._http._http = httpx.Client(
        base_url="http://outlast.test", transport=_SyncAsgi(create_app(store, dashboard=False)),
        headers={"Authorization": f"Bearer {key}"})
    yield client
    client.close()


def test_http_api_and_client_over_http(client: Client, http_client: Client, store: Store,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _seed(client, 23, 2)
    assert http_client.bulk_count("cancel", task="bulk-a", status=["QUEUED"]) == 23
    # Each /run request does a bounded share; the client calls until done.
    from outlast.server import bulk_api

    monkeypatch.setattr(bulk_api, "RUN_SECONDS", 0.0)
    calls: list[str] = []
    bulk = http_client.bulk_cancel(task="bulk-a", batch_size=10,
                                   on_progress=lambda b: calls.append(b.status))
    assert calls == ["running", "running", "running", "completed"]
    assert (bulk.total, bulk.succeeded) == (23, 23)
    assert http_client.get_bulk(bulk.id).succeeded == 23
    assert [b.id for b in http_client.list_bulk()] == [bulk.id]
    assert _statuses(store, "bulk-a") == {"CANCELED": 23}
    assert http_client._http is not None
    resp = http_client._http._http.post("/api/v1/bulk-actions", json={
        "action": "replay", "filter": {"task": "bulk-b", "colour": "red"}})
    assert resp.status_code == 422, resp.text
    resp = http_client._http._http.post("/api/v1/bulk-actions", json={
        "action": "cancel", "filter": {"status": ["FAILED"]}})
    assert (resp.status_code, resp.json()["field"]) == (422, "status")
    resp = http_client._http._http.get("/api/v1/bulk-actions/bulk_nope")
    assert (resp.status_code, resp.json()["code"]) == (404, "bulk_action_not_found")


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outlast", "runs", "bulk", *args, "--database-url", db_url],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=60,
    )


def test_cli_dry_run_refuses_no_filter_and_cancels(client: Client, store: Store,
                                                   db_url: str) -> None:
    _seed(client, 12)
    out = _cli(db_url, "cancel", "--task", "bulk-a", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "12 runs would be canceled (dry run: nothing changed)\n"
    out = _cli(db_url, "cancel")
    assert out.returncode == 2 and "--all" in out.stderr
    out = _cli(db_url, "cancel", "--task", "bulk-a", "--batch-size", "5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("cancel bulk_") and "0/12 runs" in lines[0]
    assert lines[1].endswith(": 5/12 runs (canceled 5)")
    assert lines[-1].endswith(": completed 12/12 runs (canceled 12)")
    assert _statuses(store, "bulk-a") == {"CANCELED": 12}


def test_sigkill_mid_bulk_then_resume_replays_each_run_exactly_once(
    client: Client, store: Store, db_url: str
) -> None:
    """The CLI's process dies by SIGKILL between (or inside) batches; `resume` continues
    from the last committed batch: no run is skipped, none replayed twice."""
    # The CLI never imports the task code: it replays against the published definition.
    store.publish_tasks("dev", [bulk_app.bulk_a.definition()])
    originals = _seed(client, 3000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "outlast", "runs", "bulk", "replay", "--task", "bulk-a",
         "--batch-size", "20", "--database-url", db_url],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    watcher = open_store(db_url)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            bulks = watcher.list_bulk_actions("dev")
            if bulks and bulks[0].processed >= 200:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        bulk = watcher.list_bulk_actions("dev")[0]
    finally:
        watcher.close()
    assert bulk.status == "running" and 0 < bulk.processed < 3000, bulk
    out = _cli(db_url, "resume", bulk.id, "--batch-size", "500")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].endswith(": completed 3,000/3,000 runs (replayed 3,000)")
    replayed = collections.Counter(r.replayed_from for r in _all(store, "bulk-a")
                                   if r.replayed_from)
    assert sorted(replayed) == sorted(originals)
    assert set(replayed.values()) == {1}
