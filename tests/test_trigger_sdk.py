"""The official Trigger.dev SDK (npm @trigger.dev/sdk, 4.0.0 and 4.8.3), unchanged,
pointed at outlast: a Node app triggers and manages Python tasks.

tests/node/compat.mjs makes the calls; this test runs it against a real server and
worker (subprocesses) on both backends and checks what the SDK got back. The npm
packages are installed by scripts/test (`npm ci` in tests/node).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from outlast.server.auth import create_key
from outlast.store import open_store

from .conftest import ROOT, spawn_worker

NODE_DIR = ROOT / "tests" / "node"
SDKS = ["sdk-4.0", "sdk-latest"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def platform(db_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "sdk-latest").exists():
        pytest.fail("node and tests/node/node_modules are required: run scripts/test "
                    "(it runs `npm ci` in tests/node)", pytrace=False)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTLAST_PUBLIC_URL": base}
    server = subprocess.Popen(
        [sys.executable, "-m", "outlast", "server", "--database-url", db_url,
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env,
    )
    worker = spawn_worker(db_url, "tests.apps.compat_app", env={"OUTLAST_PUBLIC_URL": base})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/api/v1/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        store = open_store(db_url)
        keys = {
            "plain": create_key(store, "dev").secret,
            "trigger": create_key(store, "dev", trigger_shape=True).secret,
        }
        store.close()
        yield base, keys
    finally:
        for p in (server, worker):
            p.terminate()
        for p in (server, worker):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _run_sdk(sdk: str, base: str, key: str) -> dict[str, object]:
    proc = subprocess.run(
        ["node", "compat.mjs", sdk],
        cwd=NODE_DIR,
        env={**os.environ, "TRIGGER_API_URL": base, "TRIGGER_SECRET_KEY": key,
             "RUN_SALT": uuid.uuid4().hex},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("sdk", SDKS)
def test_official_sdk_drives_python_tasks(
    platform: tuple[str, dict[str, str]], sdk: str
) -> None:
    base, keys = platform
    out = _run_sdk(sdk, base, keys["trigger"] if sdk == "sdk-latest" else keys["plain"])
    assert out["ok"], out.get("error")
    steps = out["steps"]
    assert isinstance(steps, dict)

    # trigger + idempotency: the same key gives the same run, marked cached
    assert steps["trigger"]["isCached"] is False
    assert steps["trigger"]["hasToken"] is True  # publicAccessToken from x-trigger-jwt
    assert steps["triggerAgain"] == {"id": steps["trigger"]["id"], "isCached": True}

    # superjson decoded into plain JSON for the Python task, documented per type
    got = steps["retrieve"]
    assert got["status"] == "COMPLETED" and got["isSuccess"] is True
    assert got["output"] == {
        "userId": 42,
        "since": "2025-01-02T03:04:05.000Z",
        "big": 10,
        "set": ["a", "b"],
        "map": {"k": 1},
        "re": "/ab+c/i",
        "nan": None,
        "nested": {"when": "2026-01-01T00:00:00.000Z", "list": [1, 2]},
    }
    assert got["tags"] == ["org:1", "compat"]

    # a 200 KB payload (offloaded as a packet by newer SDKs) arrives whole
    assert steps["large"] == {"status": "COMPLETED", "length": 200 * 1024, "n": 7}
    # batch (single-request on 4.0, two-phase streamed on 4.4+)
    assert steps["batch"]["runCount"] == 3 and steps["batch"]["completed"] == 3
    assert steps["list"]["count"] >= 1 and steps["list"]["env"] == "dev"
    assert steps["cancel"]["status"] == "CANCELED"
    assert steps["replay"]["status"] == "COMPLETED" and steps["replay"]["differs"] is True
    if sdk == "sdk-4.0":
        assert steps["reset"] == {"unsupportedInSdk": True}  # reset arrived in SDK 4.3.1
    else:
        assert steps["reset"] == {"isCached": False, "differs": True}

    # waitpoint tokens: completed by the SDK (first completion wins) and by the URL
    assert steps["token"]["status"] == "COMPLETED"
    assert steps["token"]["output"] == {"approved": True, "at": "2025-01-01T00:00:00.000Z"}
    assert steps["token"]["url"].startswith(base)
    assert steps["callback"] == {"http": 200, "status": "COMPLETED",
                                 "output": {"via": "callback"}}
    # a permanent error is final and clear (no retry storm: x-should-retry false)
    assert steps["unknownTask"]["thrown"] is True and steps["unknownTask"]["status"] == 404
