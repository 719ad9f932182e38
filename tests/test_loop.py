"""The event loop workers and servers run on: uvloop by default, asyncio on request."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop

from outlast import Worker, step, task
from outlast._errors import ConfigurationError
from outlast._loop import loop_name, new_event_loop
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from tests.apps import crash_app
from tests.conftest import ROOT, spawn_worker


@task(id="loop-add")
async def loop_add(payload: dict[str, int]) -> int:
    a = await step.run("double", lambda: payload["x"] * 2)
    await asyncio.sleep(0)
    return a + 1


def test_auto_is_uvloop_where_installed() -> None:
    loop = new_event_loop("auto")
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_keeps_the_standard_loop() -> None:
    loop = new_event_loop("asyncio")
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


def test_an_unknown_loop_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError) as err:
        loop_name("trio")
    assert err.value.details["field"] == "loop"
    assert "'trio'" in err.value.message


def test_uvloop_asked_for_but_missing_is_an_error_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name)
    )
    assert loop_name("auto") == "asyncio"
    with pytest.raises(ConfigurationError, match="uvloop is not installed"):
        loop_name("uvloop")


def test_a_worker_runs_steps_on_uvloop(store: Store, client: Client) -> None:
    async def main() -> None:
        handle = await loop_add.trigger({"x": 20})
        worker = Worker(store, tasks={"loop-add": loop_add})
        await worker.run_until_idle()
        await worker.shutdown()
        run = client.retrieve(handle.id)
        assert run.status == RunStatus.COMPLETED
        assert run.output == 41

    loop = new_event_loop("uvloop")
    try:
        assert isinstance(loop, uvloop.Loop)
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_bad_loop_flag_fails_before_the_database_is_touched(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    proc = subprocess.run(
        [sys.executable, "-m", "outlast", "dev", "--no-reload", "--loop", "fast",
         "--database-url", f"sqlite:///{db}", "--app", "tests.apps.engine_app"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "loop must be one of auto, uvloop, asyncio, not 'fast'" in proc.stderr
    assert not db.exists()


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_a_worker_process_runs_on_either_loop(choice: str, db_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    client = Client(db_url, env="dev")
    store = open_store(db_url)
    proc = spawn_worker(db_url, "tests.apps.crash_app", extra=["--loop", choice])
    try:
        payload = {"ledger": str(ledger), "n": 7, "sleep": 0.01}
        handle = client.trigger(crash_app.crash_append, payload)
        deadline = time.monotonic() + 30
        while (run := store.get_run("dev", handle.id)) is None or not run.status.is_final:
            assert proc.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the run did not finish"
            time.sleep(0.05)
        assert run.status == RunStatus.COMPLETED
        assert run.output == 7
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        client.close()
        store.close()
