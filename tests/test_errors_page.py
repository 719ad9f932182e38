"""The errors page: failures grouped by fingerprint by the scheduler's failure scan, on
SQLite and PostgreSQL. Three shapes of failure over 300 runs make three groups with the
right counts; ids, numbers and uuids in messages do not split a group; a resolved group
that recurs reopens; an ignored one stays ignored; one shape failing under two task code
versions is one group with the failures of each version (store, API, CLI, dashboard)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from outlast import Retry, Worker, task
from outlast._clock import FakeClock
from outlast.cli import main
from outlast.client import Client
from outlast.server.auth import create_key
from outlast.store._fingerprint import fingerprint, mask
from outlast.store.base import Store
from tests.test_dashboard import _app, _client, _text


class CardDeclined(Exception):
    pass


@task(id="err-shapes", retry=Retry(max_attempts=1))
async def shapes(payload: dict[str, Any]) -> None:
    n = payload["n"]
    if n % 3 == 0:
        raise CardDeclined(f"card for customer cus_{uuid.uuid4().hex[:12]}7 declined ({n} EUR)")
    if n % 3 == 1:
        raise KeyError(f"order {uuid.uuid4()} not found")
    raise ValueError(f"bad row {n} at offset 0x{n:08x}ab")


def test_masking_keeps_the_shape_and_drops_the_values() -> None:
    assert mask("order 0b3c6a5e-53f4-4a11-9a2f-7d3c9a1e2b4c of cus_9fK2a81 cost 12.50") == (
        "order <uuid> of <id> cost <n>"
    )
    a = fingerprint('{"type": "E", "message": "user 41 missing", "traceback": ""}')
    b = fingerprint('{"type": "E", "message": "user 9000 missing", "traceback": ""}')
    assert a.key == b.key
    c = fingerprint('{"type": "F", "message": "user 41 missing", "traceback": ""}')
    assert c.key != a.key


def test_the_top_frame_in_task_code_is_part_of_the_fingerprint() -> None:
    tb = (
        'Traceback (most recent call last):\n'
        '  File "/srv/app/.venv/lib/python3.11/site-packages/outlast/durable.py", line 9, in run\n'
        '  File "/srv/app/tasks/billing.py", line {line}, in {fn}\n'
        '  File "/usr/lib/python3.11/json/decoder.py", line 3, in decode\n'
    )

    def fp(line: int, fn: str) -> str:
        error = {"type": "E", "message": "m", "traceback": tb.format(line=line, fn=fn)}
        return fingerprint(json.dumps(error)).key

    assert fingerprint(
        json.dumps({"type": "E", "message": "m", "traceback": tb.format(
            line=1, fn="charge")})
    ).frame == "billing.py:charge"
    assert fp(10, "charge") == fp(99, "charge")  # a moved line keeps its group
    assert fp(10, "charge") != fp(10, "refund")


async def test_three_shapes_over_300_runs_make_three_groups(
    client: Client, store: Store, workers: Callable[..., Worker]
) -> None:
    for n in range(300):
        client.trigger(shapes, {"n": n})
    assert await workers(shapes).run_until_idle() == 300
    while store.scan_failures(limit=128).failures:
        pass
    groups = store.list_error_groups("dev")
    assert sorted((g.exc_type, g.count) for g in groups) == [
        ("CardDeclined", 100), ("KeyError", 100), ("ValueError", 100)
    ]
    by_type = {g.exc_type: g for g in groups}
    assert by_type["CardDeclined"].message == "card for customer <id> declined (<n> EUR)"
    assert by_type["KeyError"].message == "'order <uuid> not found'"
    assert by_type["ValueError"].frame == "test_errors_page.py:shapes"
    detail = store.error_group("dev", by_type["ValueError"].fingerprint)
    assert detail is not None
    assert detail.tasks == {"err-shapes": 100}
    assert sum(n for _, n in detail.histogram) == 100
    sample = client.retrieve(detail.sample_run_id)
    assert sample.task_id == "err-shapes"
    assert store.scan_failures().failures == 0  # each run counted once
    assert store.list_error_groups("dev", status="resolved") == []


async def test_a_resolved_group_that_recurs_reopens(
    client: Client, store: Store, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    worker = workers(shapes)
    client.trigger(shapes, {"n": 2})
    client.trigger(shapes, {"n": 3})
    await worker.run_until_idle()
    store.scan_failures()
    groups = {g.exc_type: g for g in store.list_error_groups("dev")}
    assert store.set_error_group_status("dev", groups["ValueError"].fingerprint, "resolved")
    assert store.set_error_group_status("dev", groups["CardDeclined"].fingerprint, "ignored")
    assert [g.exc_type for g in store.list_error_groups("dev", status="resolved")] == [
        "ValueError"
    ]
    clock.advance(60)
    client.trigger(shapes, {"n": 5})
    client.trigger(shapes, {"n": 6})
    await worker.run_until_idle()
    store.scan_failures()
    after = {g.exc_type: g for g in store.list_error_groups("dev")}
    assert after["ValueError"].status == "open"
    assert after["ValueError"].reopened == 1
    assert after["ValueError"].count == 2
    assert after["CardDeclined"].status == "ignored"
    assert after["CardDeclined"].count == 2


async def test_one_shape_under_two_versions_is_one_group_with_both_versions(
    client: Client, store: Store, db_url: str, workers: Callable[..., Worker],
    capsys: pytest.CaptureFixture[str],
) -> None:
    v1, v2 = workers(shapes, version="v1"), workers(shapes, version="v2")
    for n, version in ((2, "v1"), (5, "v1"), (8, "v1"), (11, "v2"), (14, "v2")):
        client.trigger(shapes, {"n": n}, version=version)  # ValueError, one shape
    assert await v1.run_until_idle() == 3
    assert await v2.run_until_idle() == 2
    store.scan_failures()  # the workers' scheduler may have grouped some already
    [group] = store.list_error_groups("dev")
    assert group.count == 5 and group.versions == {}  # listings leave the versions out
    detail = store.error_group("dev", group.fingerprint)
    assert detail is not None
    assert detail.versions == {"v1": 3, "v2": 2}
    assert list(detail.versions) == ["v1", "v2"]  # most failures first
    assert detail.tasks == {"err-shapes": 5}

    app = _app(store, require_login=False)
    key = create_key(store, "dev").secret
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://outlast.test",
        headers={"Authorization": f"Bearer {key}"},
    ) as api:
        body = (await api.get(f"/api/v1/errors/{group.fingerprint}")).json()
    assert body["versions"] == {"v1": 3, "v2": 2}
    dash = await _client(app)
    try:
        await dash.get("/runs")
        page = _text(await dash.get(f"/errors/{group.fingerprint}"))
    finally:
        await dash.http.aclose()
    assert "v1 · 3" in page and "v2 · 2" in page

    assert main(["errors", "show", group.fingerprint, "--database-url", db_url]) == 0
    assert "versions: v1 (3), v2 (2)" in capsys.readouterr().out
    assert main(["errors", "show", group.fingerprint, "--json", "--database-url", db_url]) == 0
    assert json.loads(capsys.readouterr().out)["versions"] == {"v1": 3, "v2": 2}
