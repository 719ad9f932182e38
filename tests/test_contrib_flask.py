"""outlast.contrib.flask: ``Outlast(app)`` gives the app a client from its config, and
``flask outlast migrate|worker`` run outlast's commands with it; the worker is a real
process that executes what a view triggered and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from tests.apps.flask_app import create_app
from tests.conftest import ROOT


def test_a_view_triggers_through_the_apps_client(db_url: str) -> None:
    app = create_app({"OUTLAST_DATABASE_URL": db_url, "OUTLAST_ENV": "dev"})
    response = app.test_client().post("/greet", json={"name": "ada"})
    run_id = response.get_json()["run_id"]
    client = Client(db_url, env="dev")
    try:
        run = client.retrieve(run_id)
        assert run.task_id == "flask-greet" and run.status == RunStatus.QUEUED
    finally:
        client.close()
        app.extensions["outlast_client"].close()


def test_flask_outlast_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/flask.db"
    app = create_app({"OUTLAST_DATABASE_URL": url})
    result = app.test_cli_runner().invoke(args=["outlast", "migrate"])
    assert result.exit_code == 0, result.output
    store = open_store(url)
    try:
        store.check_schema()  # raises on a database without outlast's schema
        assert store._schema_exists()  # type: ignore[attr-defined]
    finally:
        store.close()


def test_flask_outlast_worker_runs_the_apps_tasks(db_url: str) -> None:
    app = create_app({"OUTLAST_DATABASE_URL": db_url, "OUTLAST_ENV": "dev"})
    run_id = app.test_client().post("/greet", json={"name": "bob"}).get_json()["run_id"]
    app.extensions["outlast_client"].close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTLAST_DATABASE_URL": db_url,
           "OUTLAST_ENV": "dev"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "tests.apps.flask_app:create_app",
         "outlast", "worker", "--concurrency", "2"],
        cwd=ROOT, env=env,
    )
    client = Client(db_url, env="dev")
    try:
        deadline = time.monotonic() + 30
        while not client.retrieve(run_id).is_final:
            assert time.monotonic() < deadline, "the flask worker did not run the run"
            assert proc.poll() is None, f"flask outlast worker exited {proc.returncode}"
            time.sleep(0.1)
        assert client.retrieve(run_id).output == "hello bob"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
