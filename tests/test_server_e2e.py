"""Acceptance: `outlast server` and `outlast worker` as real processes, over real HTTP.

The app side is ``outlast.Client(api_url=…, secret_key=…)`` (and, in a process of its own,
``task.trigger()`` with OUTLAST_API_URL and OUTLAST_SECRET_KEY set and a database URL that
cannot be reached, which shows the app needs no database). Keys come from `outlast keys`.
The last test runs two servers and two workers against one PostgreSQL and counts, in a
ledger file the task code appends to, that 1,000 triggers spread over both servers ran
exactly once each. Figures are printed (run with ``-s``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from outlast import RunNotFound, ValidationError
from outlast._http import Unauthorized
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server.auth import create_key
from outlast.store import open_store

from .conftest import ROOT, _pg_url, drop_pg_database, new_pg_database, spawn_worker

APP = "tests.apps.server_app"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Fleet:
    """The processes of one test; all of them are killed at teardown."""

    def __init__(self, db_url: str, tmp: Path) -> None:
        self.db_url = db_url
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outlast", *args, "--database-url", self.db_url],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )

    def key(self, env: str = "dev") -> str:
        out = self.cli("keys", "create", "--env", env)
        lines = out.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ol_sk_"), out.stdout
        assert "shown once" in out.stderr
        return lines[0]

    def server(self) -> Callable[[], str]:
        """Start a server; the returned call waits until it answers and gives its URL (so
        that processes start side by side)."""
        port = free_port()
        log_path = self.tmp / f"server-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "outlast", "server", "--database-url", self.db_url,
                 "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{url}/api/v1/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        def started() -> str:
            wait_for("the server to answer", ready)
            return url

        return started

    def worker(self, concurrency: int = 10) -> subprocess.Popen[bytes]:
        proc = spawn_worker(self.db_url, APP, concurrency=concurrency)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(db_url, tmp_path)
    try:
        yield f
    finally:
        f.stop()


def wait_workers(db_url: str, n: int) -> None:
    store = open_store(db_url)
    try:
        wait_for(f"{n} live workers", lambda: len(store.list_workers("dev")) >= n)
    finally:
        store.close()


# An app process: no task worker, no database (the URL points nowhere), only the API.
APP_SCRIPT = r"""
import asyncio, json
from outlast import AsyncClient, Client, ValidationError

out = {}
client = Client()  # OUTLAST_API_URL + OUTLAST_SECRET_KEY
handle = client.trigger("srv-order", {"sku": "app", "qty": 21})
out["order"] = client.wait_for_run(handle.id, timeout=30).output
try:  # the task's code is not imported here: the server checks its published schema
    client.trigger("srv-order", {"sku": "app", "qty": "lots"})
except ValidationError as exc:
    out["field"] = exc.field

from tests.apps.server_app import child

async def main():
    handle = await child.trigger(5)  # task.trigger() goes over HTTP too
    out["child"] = await handle.output(timeout=30)
    handles = await AsyncClient().batch_trigger("srv-child", [1, 2, 3])
    out["batch"] = [(await h.result(timeout=30)).output for h in handles]

asyncio.run(main())
print(json.dumps(out))
"""


def test_api_over_http(fleet: Fleet, backend: str) -> None:
    """One server and one worker per backend: the app process, the client's calls, the
    event stream, and keys from the CLI."""
    server = fleet.server()
    fleet.worker()
    key = fleet.key()
    url = server()
    wait_workers(fleet.db_url, 1)
    app_process(fleet, url, key)
    client_calls(url, key)
    event_stream(url, key)
    if backend == "sqlite":  # the CLI is the same on both; the store's part is in-process
        store = open_store(fleet.db_url)
        prod_key = create_key(store, "prod").secret
        store.close()
        revoke_from_the_cli(fleet, url, prod_key)


def app_process(fleet: Fleet, url: str, key: str) -> None:

    started = time.monotonic()
    app = subprocess.run(
        [sys.executable, "-c", APP_SCRIPT], cwd=ROOT, capture_output=True, text=True,
        timeout=90,
        env={**fleet.env, "OUTLAST_API_URL": url, "OUTLAST_SECRET_KEY": key,
             "OUTLAST_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere"},
    )
    assert app.returncode == 0, app.stderr
    assert json.loads(app.stdout) == {
        "order": {"sku": "app", "total": 42},
        "field": "payload.qty",
        "child": 10,
        "batch": [2, 4, 6],
    }
    print(f"\napp process over HTTP: {time.monotonic() - started:.2f} s")


def client_calls(url: str, key: str) -> None:
    client = Client(api_url=url, secret_key=key)
    try:
        handle = client.trigger("srv-order", {"sku": "c", "qty": 2}, tags=["e2e"],
                                metadata={"from": "test"})
        run = client.wait_for_run(handle.id, timeout=30)
        assert run.status == RunStatus.COMPLETED and run.output == {"sku": "c", "total": 4}
        assert run.tags == ["e2e"] and run.metadata == {"from": "test"}
        assert run.attempt == 1 and run.finished_at is not None and run.queue == "task/srv-order"
        assert [r.id for r in client.list_runs(tag="e2e")] == [handle.id]

        replay = client.replay(handle.id, {"sku": "c", "qty": 3})
        assert client.wait_for_run(replay.id, timeout=30).output == {"sku": "c", "total": 6}
        assert client.retrieve(replay.id).replayed_from == handle.id

        later = client.trigger("srv-order", {"sku": "d", "qty": 1}, delay=3600)
        assert client.cancel(later.id).status == RunStatus.CANCELED

        token = client.create_token(timeout=600, tags=["e2e"])
        assert client.get_token(token.id).status == "pending"
        assert [t.id for t in client.list_tokens()] == [token.id]
        assert client.complete_token(token.id, {"ok": True}).output == {"ok": True}

        limited = {q["name"]: q for q in client.list_queues()}["srv-limited"]
        assert limited["concurrency_limit"] == 2 and limited["paused"] is False
        assert client.pause_queue("srv-limited")["paused"] is True
        assert client.resume_queue("srv-limited")["paused"] is False
        assert client.set_queue_limit("srv-limited", 4)["concurrency_limit"] == 4

        with pytest.raises(RunNotFound):
            client.retrieve("run_doesnotexist")
        with pytest.raises(ValidationError) as info:
            client.batch_trigger("srv-order", [{"sku": "a", "qty": 1}, {"qty": 2}])
        assert info.value.field == "items[1].payload.sku"
    finally:
        client.close()
    wrong = Client(api_url=url, secret_key=key[:-1])
    try:
        with pytest.raises(Unauthorized):
            wrong.list_runs()
    finally:
        wrong.close()


def event_stream(url: str, key: str) -> None:
    """The SSE stream over a real socket, read as it arrives: the token is completed from
    outside while the stream is open."""
    client = Client(api_url=url, secret_key=key)
    frames: list[tuple[str, Any]] = []
    try:
        token = client.create_token()
        handle = client.trigger("srv-stream", {"token": token.id, "n": 3})
        completed = False
        with httpx.stream("GET", f"{url}/api/v1/runs/{handle.id}/events",
                          headers={"Authorization": f"Bearer {key}"}, timeout=30) as resp:
            assert resp.status_code == 200
            event = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    frames.append((str(event), json.loads(line[6:])))
                    status = frames[-1][1].get("status") if event == "status" else None
                    if status == "WAITING" and not completed:
                        client.complete_token(token.id, "go")  # while the stream is open
                        completed = True
    finally:
        client.close()
    statuses = [d["status"] for k, d in frames if k == "status"]
    order = ["QUEUED", "EXECUTING", "WAITING", "QUEUED", "EXECUTING", "COMPLETED"]
    it = iter(order)
    assert all(s in it for s in statuses), statuses
    assert "WAITING" in statuses and statuses[-1] == "COMPLETED"
    assert frames[-1][0] == "end" and frames[-1][1]["output"] == {"prepared": 30, "token": "go"}
    assert ("log", "waiting for the token") in [(k, d.get("message")) for k, d in frames]


def revoke_from_the_cli(fleet: Fleet, url: str, key: str) -> None:
    listed = fleet.cli("keys", "list", "--env", "prod").stdout
    assert key not in listed and key[:14] in listed and "active" in listed
    key_id = listed.split()[0]
    client = Client(api_url=url, secret_key=key)
    try:
        assert client.list_runs() == []
        assert fleet.cli("keys", "revoke", key_id).stdout.startswith(f"revoked {key_id}")

        def refused() -> bool:
            try:
                client.list_runs()
            except Unauthorized:
                return True
            return False

        started = time.monotonic()
        wait_for("the revoked key to be refused", refused, timeout=5)
        assert time.monotonic() - started < 3.5  # the key cache lives 2 s
    finally:
        client.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = new_pg_database()
    try:
        yield _pg_url(name)
    finally:
        drop_pg_database(name)


def test_two_servers_two_workers_one_postgres(pg_url: str, tmp_path: Path) -> None:
    fleet = Fleet(pg_url, tmp_path)
    closers: list[Callable[[], None]] = []
    try:
        servers = [fleet.server(), fleet.server()]
        workers = [fleet.worker(concurrency=20), fleet.worker(concurrency=20)]
        key = fleet.key()
        urls = [started() for started in servers]
        wait_workers(pg_url, 2)
        clients = [Client(api_url=u, secret_key=key) for u in urls]
        closers.extend(c.close for c in clients)
        ledger = str(tmp_path / "ledger.jsonl")
        n = 1000

        def send(i: int) -> str:
            return clients[i % 2].trigger("srv-ledger", {"ledger": ledger, "i": i}).id

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(send, range(n)))
        took = time.monotonic() - started
        assert len(set(ids)) == n

        def all_done() -> bool:
            if not os.path.exists(ledger):
                return False
            with open(ledger) as f:
                return sum(1 for _ in f) >= n

        wait_for("every run to execute", all_done, timeout=60)
        ran = time.monotonic() - started
        time.sleep(0.5)  # a duplicate execution, if any, would land now
        with open(ledger) as f:
            lines = [json.loads(line) for line in f]
        assert Counter(x["run"] for x in lines) == Counter(ids)  # each run exactly once
        assert sorted(x["i"] for x in lines) == list(range(n))
        by_worker = Counter(x["pid"] for x in lines)
        assert set(by_worker) == {w.pid for w in workers}, by_worker

        # Stateless servers: either one answers for a run the other one triggered.
        for run_id in (ids[0], ids[1]):
            for c in clients:
                assert c.retrieve(run_id).status == RunStatus.COMPLETED
        # A token made through one server completes through the other's callback URL.
        token = clients[0].create_token()
        path = token.callback_url.split("/api/v1/", 1)[1]
        assert httpx.post(f"{urls[1]}/api/v1/{path}", json={"via": 1}).status_code == 200
        assert clients[0].get_token(token.id).output == {"via": 1}
        print(f"\n2 servers, 2 workers, one PostgreSQL: {n} triggers in {took:.2f} s "
              f"({n / took:,.0f}/s over HTTP, 16 threads); all ran once within {ran:.2f} s; "
              f"per worker {sorted(by_worker.values())}")
    finally:
        for close in closers:
            close()
        fleet.stop()


def test_outlast_dev_serves_the_api_with_a_key_made_on_first_start(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    env["PYTHONPATH"] = str(ROOT)

    def start(n: int) -> tuple[subprocess.Popen[bytes], str]:
        log_path = tmp_path / f"dev-{n}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "outlast", "dev", "--app", APP, "--no-reload",
                 "--port", str(port)],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

        def printed_key() -> str | None:
            assert proc.poll() is None, log_path.read_text()
            for line in log_path.read_text().splitlines():
                if "export OUTLAST_SECRET_KEY=" in line:
                    return line.split("=", 1)[1].strip()
            return None

        return proc, wait_for("outlast dev to print its key", printed_key)

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    proc, key = start(0)
    try:
        stored = tmp_path / ".outlast" / "dev-key"
        assert stored.read_text().strip() == key and stored.stat().st_mode & 0o777 == 0o600
        client = Client(api_url=f"http://127.0.0.1:{port}", secret_key=key)
        try:
            def answers() -> bool:
                try:
                    return client.list_runs() == []
                except httpx.TransportError:
                    return False

            wait_for("the dev API", answers)
            handle = client.trigger("srv-child", 4)
            assert client.wait_for_run(handle.id, timeout=30).output == 8
        finally:
            client.close()
    finally:
        stop(proc)
    proc, again = start(1)  # a restart shows the same key; it makes no new one
    stop(proc)
    assert again == key
    store = open_store(f"sqlite:///{tmp_path}/.outlast/outlast.db")
    try:
        assert len(store.list_api_keys("dev")) == 1
    finally:
        store.close()
