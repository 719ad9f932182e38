"""One request must not freeze the server (issue 16, defect 7), on a real `outlast server`.

A 100,000-item streamed batch (`POST /api/v3/batches/{id}/items`, the Trigger.dev SDK v4
path) and, on SQLite, a 100,000-item v1 batch are posted while a probe asks
`/api/v1/health` every 50 ms: health keeps answering (it waited 30 to 95 s for the v3
batch before). An oversize batch
body is refused with 413 while it is read, and the server's peak memory stays far below
the body's size (a 55 MB body used to grow it by 660 MB before a 422). In-process: a
chunked body over the limit is a 413, and one bad item in the last chunk of a large batch
names its index and writes nothing. Figures are printed (run with ``-s``).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import Store, TaskDef
from tests.faults.invariant import check_liveness
from tests.test_server_e2e import Fleet

# The default size freezes the old server for seconds (it held health for 30 to 95 s at
# 100,000); the full size runs under -m soak.
SIZES = [20_000, pytest.param(100_000, marks=pytest.mark.soak)]
ITEM_TASK = TaskDef(id="load-item", queue="task/load-item", payload_schema={}, spec={})


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    store = open_store(db_url)
    try:
        store.publish_tasks("dev", [ITEM_TASK])
    finally:
        store.close()
    f = Fleet(db_url, tmp_path)
    try:
        yield f
    finally:
        f.stop()


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class Probe(threading.Thread):
    """Makes one request every 50 ms until stopped, keeping each answer's latency."""

    def __init__(self, url: str, key: str, trigger: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.trigger = url, key, trigger
        self.latencies: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120,
                          headers={"Authorization": f"Bearer {self.key}"}) as http:
            while not self.done.is_set():
                started = time.perf_counter()
                if self.trigger:
                    resp = http.post(f"/api/v1/tasks/{ITEM_TASK.id}/trigger", json={})
                else:
                    resp = http.get("/api/v1/health")
                assert resp.status_code == 200, resp.text
                self.latencies.append(time.perf_counter() - started)
                self.done.wait(0.05)

    def stop(self) -> list[float]:
        self.done.set()
        self.join(timeout=130)
        return sorted(self.latencies)


def _figures(lat: list[float]) -> tuple[str, float]:
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (f"{len(lat)} calls, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {lat[-1] * 1000:.0f} ms"), p99


def _ndjson(n: int) -> Iterator[bytes]:
    """The items as the SDK streams them: one JSON line each, sent in chunks."""
    lines = []
    for i in range(n):
        lines.append(orjson.dumps({"index": i, "task": ITEM_TASK.id,
                                   "payload": orjson.dumps({"i": i}).decode(),
                                   "options": {"payloadType": "application/json"}}))
        if len(lines) == 1000:
            yield b"\n".join(lines) + b"\n"
            lines = []
    if lines:
        yield b"\n".join(lines) + b"\n"


def _while_probed(url: str, key: str, backend: str, label: str,
                  post: Callable[[], httpx.Response]) -> httpx.Response:
    probes = [Probe(url, key, trigger=False), Probe(url, key, trigger=True)]
    for p in probes:
        p.start()
    time.sleep(0.3)
    started = time.perf_counter()
    resp = post()
    took = time.perf_counter() - started
    time.sleep(0.3)
    (health, health_p99), (triggers, trigger_p99) = (_figures(p.stop()) for p in probes)
    print(f"\n[{backend}] {label}: {took:.1f} s; meanwhile health: {health}; "
          f"triggers: {triggers}")
    assert resp.status_code == 200, resp.text[:300]
    # Generous for a loaded 2-core machine; the batch used to hold health for 30 to 95 s.
    assert health_p99 < 1.0, f"health p99 {health_p99:.2f} s during the batch"
    if backend == "postgres":
        # SQLite has one writer: a trigger waits for the batch's one transaction to commit.
        assert trigger_p99 < 1.0, f"trigger p99 {trigger_p99:.2f} s during the batch"
    return resp


@pytest.mark.timeout(600)
@pytest.mark.parametrize("n", SIZES)
def test_a_large_batch_does_not_freeze_the_server(fleet: Fleet, backend: str, n: int) -> None:
    start = fleet.server()
    key = fleet.key()
    url = start()
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=600) as api:
        batch = api.post("/api/v3/batches", json={"runCount": n})
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]

        def post_v3() -> httpx.Response:
            return api.post(f"/api/v3/batches/{batch_id}/items", content=_ndjson(n),
                            headers={"content-type": "application/x-ndjson"})

        resp = _while_probed(url, key, backend, f"v3 streamed batch of {n:,}", post_v3)
        assert resp.json()["itemsAccepted"] == n

        body = orjson.dumps({"items": [{"payload": {"i": i}} for i in range(n)]})

        def post_v1() -> httpx.Response:
            return api.post(f"/api/v1/tasks/{ITEM_TASK.id}/batch", content=body,
                            headers={"content-type": "application/json"})

        if backend == "sqlite":  # what holds the loop does not depend on the backend
            resp = _while_probed(url, key, backend,
                                 f"v1 batch of {n:,} ({len(body) / 1e6:.1f} MB)", post_v1)
            assert resp.json()["runCount"] == n
    check_liveness(fleet.db_url)


def test_an_oversize_batch_body_is_413_without_the_server_growing(fleet: Fleet) -> None:
    start = fleet.server()
    key = fleet.key()
    url = start()
    pid = fleet.procs[0].pid
    before = _rss_kib(pid, "VmRSS")
    item = b'{"payload": {"pad": "' + b"x" * 1000 + b'"}}'
    body = b'{"items": [' + b",".join([item] * 55_000) + b"]}"  # 55 MB
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=120) as api:
        resp = api.post(f"/api/v1/tasks/{ITEM_TASK.id}/batch", content=body,
                        headers={"content-type": "application/json"})
        peak = _rss_kib(pid, "VmHWM")
        print(f"\nserver RSS before {before / 1024:.0f} MB, peak after a 55 MB body "
              f"{peak / 1024:.0f} MB (answered {resp.status_code})")
        assert resp.status_code == 413, resp.text[:300]
        assert resp.json()["code"] == "payload_too_large"
        assert "OUTLAST_MAX_BATCH_BYTES" in resp.json()["error"]
        # The server still answers, and took nothing in.
        assert api.get("/api/v1/runs").json()["data"] == []
    assert (peak - before) / 1024 < 40, f"the server grew by {(peak - before) / 1024:.0f} MB"
    check_liveness(fleet.db_url)


# -- in-process: the reader's limit and chunked validation ----------------------------------


@pytest.fixture
async def api(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("OUTLAST_MAX_BATCH_BYTES", str(1024 * 1024))
    store.publish_tasks("dev", [ITEM_TASK])
    secret = create_key(store, "dev").secret
    transport = httpx.ASGITransport(app=create_app(store, dashboard=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120,
                                 headers={"Authorization": f"Bearer {secret}"}) as c:
        yield c


def _runs(store: Store) -> int:
    return sum(sum(by.values()) for by in store.count_runs("dev").values())


async def test_a_chunked_batch_over_the_limit_is_413_while_read(
    api: httpx.AsyncClient, store: Store, db_url: str
) -> None:
    sent = 0

    async def items() -> AsyncIterator[bytes]:
        nonlocal sent
        for chunk in _ndjson(20_000):  # about 2 MB against a 1 MiB limit
            sent += len(chunk)
            yield chunk

    batch_id = (await api.post("/api/v3/batches", json={"runCount": 20_000})).json()["id"]
    resp = await api.post(f"/api/v3/batches/{batch_id}/items", content=items(),
                          headers={"content-type": "application/x-ndjson"})
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["code"] == "payload_too_large"

    async def v1() -> AsyncIterator[bytes]:
        yield b'{"items": ['
        for i in range(20_000):
            yield b'{"payload": {"i": %d}},' % i + b" " * 80
        yield b'{"payload": {}}]}'

    resp = await api.post(f"/api/v1/tasks/{ITEM_TASK.id}/batch", content=v1(),
                          headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text[:300]
    assert _runs(store) == 0
    check_liveness(db_url)


async def test_a_bad_item_deep_in_a_large_batch_is_named_and_nothing_is_written(
    api: httpx.AsyncClient, store: Store, db_url: str
) -> None:
    items: list[dict[str, object]] = [{"payload": {"i": i}} for i in range(2_500)]
    items[2_345] = {"payload": {"i": 1}, "options": {"maxAttempts": 0}}
    resp = await api.post(f"/api/v1/tasks/{ITEM_TASK.id}/batch", json={"items": items})
    assert resp.status_code == 422, resp.text[:300]
    assert resp.json()["field"] == "items[2345].options.maxAttempts"
    items[2_345] = {"payload": {"i": 1}, "options": {"delay": "soon"}}
    resp = await api.post("/api/v2/tasks/batch",
                          json={"items": [{**x, "task": ITEM_TASK.id} for x in items]})
    assert resp.status_code == 422 and resp.json()["field"] == "items[2345].options.delay"
    resp = await api.post("/api/v2/tasks/batch", json={"items": items})
    assert resp.status_code == 422 and resp.json()["field"] == "items[0].task"

    batch_id = (await api.post("/api/v3/batches", json={"runCount": 2_500})).json()["id"]
    lines = [orjson.dumps({"index": i, "task": ITEM_TASK.id, "payload": "{}"})
             for i in range(2_500)]
    lines[2_345] = b'{"index": 2345, "task": "load-item", "options": {"maxAttempts": 0}}'
    resp = await api.post(f"/api/v3/batches/{batch_id}/items", content=b"\n".join(lines),
                          headers={"content-type": "application/x-ndjson"})
    assert resp.status_code == 422, resp.text[:300]
    assert resp.json()["field"] == "items[2345].options.maxAttempts"
    assert _runs(store) == 0

    resp = await api.post(f"/api/v1/tasks/{ITEM_TASK.id}/batch", json={"items": items[:2_000]})
    assert resp.status_code == 200 and resp.json()["runCount"] == 2_000
    assert _runs(store) == 2_000
    check_liveness(db_url)
