"""outlast.contrib.django in a small project (tests/django_project), with pytest-django.

Each installed app's tasks.py is imported; a view's trigger waits for the commit and is
dropped by the rollback (on SQLite and PostgreSQL as outlast's store); with
TRIGGER = "in_transaction" the run is written through Django's PostgreSQL connection in
the view's own transaction; the management commands migrate and run a real worker; the
dashboard is served inside the project to staff only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client as DjangoClient

from outlast import ValidationError
from outlast._errors import ConfigurationError
from outlast.client import Client
from outlast.contrib.django import trigger
from outlast.contrib.django._trigger import reset_client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.tasks import REGISTRY
from tests.conftest import ROOT
from tests.django_project.shop.models import Order
from tests.django_project.shop.tasks import ship


@pytest.fixture
def outlast_url(settings: Any, db_url: str) -> Iterator[str]:
    settings.OUTLAST = {"DATABASE_URL": db_url, "ENV": "dev"}
    reset_client()
    yield db_url
    reset_client()


@pytest.fixture
def runs(outlast_url: str) -> Iterator[Client]:
    client = Client(outlast_url, env="dev")
    yield client
    client.close()


def test_tasks_modules_of_installed_apps_are_imported() -> None:
    assert REGISTRY.get("django-ship") is ship


@pytest.mark.django_db(transaction=True)
def test_a_views_run_starts_with_the_commit_and_not_after_a_rollback(runs: Client) -> None:
    http = DjangoClient(raise_request_exception=False)
    failed = http.get("/orders/o-1/?fail=1")
    assert failed.status_code == 500
    assert not Order.objects.filter(number="o-1").exists()
    assert runs.list_runs() == []

    answer = http.get("/orders/o-2/").json()
    assert answer["committed"] is True
    run = runs.retrieve(answer["run_id"])
    assert run.task_id == "django-ship" and run.payload == {"number": "o-2"}
    assert Order.objects.filter(number="o-2").exists()


@pytest.mark.django_db(transaction=True)
def test_inside_atomic_the_run_waits_for_the_commit(runs: Client) -> None:
    with transaction.atomic():
        pending = trigger(ship, {"number": "o-3"}, tags=["order:o-3"])
        assert not pending.committed
        assert runs.list_runs() == []  # not before the commit
    assert pending.handle is not None and pending.handle.id == pending.id
    assert runs.retrieve(pending.id).tags == ["order:o-3"]

    with pytest.raises(ValidationError, match=r"payload\.number"), transaction.atomic():
        trigger(ship, {"number": 3})  # validated in the view, not at the commit
    assert len(runs.list_runs()) == 1


@pytest.mark.django_db(transaction=True, databases=["default", "pg"])
def test_in_transaction_mode_writes_through_djangos_postgresql_connection(
    settings: Any,
) -> None:
    # outlast's tables in the app's own (test) database, reached through its settings.
    settings.OUTLAST = {"ENV": "dev", "DATABASE": "pg", "TRIGGER": "in_transaction"}
    reset_client()
    name = connections["pg"].settings_dict["NAME"]
    assert name.startswith("test_")
    from outlast.contrib.django import client

    client().store.migrate()
    try:
        with pytest.raises(RuntimeError), transaction.atomic(using="pg"):
            Order.objects.using("pg").create(number="p-1")
            pending = trigger(ship, {"number": "p-1"})
            assert client().store.get_run("dev", pending.id) is None  # another session
            raise RuntimeError("rolled back")
        assert client().list_runs() == []
        assert not Order.objects.using("pg").filter(number="p-1").exists()

        with transaction.atomic(using="pg"):
            Order.objects.using("pg").create(number="p-2")
            pending = trigger(ship, {"number": "p-2"})
        assert client().retrieve(pending.id).status == RunStatus.QUEUED
    finally:
        reset_client()


def test_outlast_migrate_command_creates_the_schema(settings: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/dj.db"
    settings.OUTLAST = {"DATABASE_URL": url}
    call_command("outlast_migrate")
    store = open_store(url)
    try:
        store.check_schema()
        assert store._schema_exists()  # type: ignore[attr-defined]
    finally:
        store.close()


def test_outlast_worker_command_runs_the_projects_tasks(runs: Client, db_url: str) -> None:
    handle = runs.trigger("django-ship", {"number": "w-1"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTLAST_DATABASE_URL": db_url,
           "DJANGO_SETTINGS_MODULE": "tests.django_project.settings"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "outlast_worker", "--concurrency", "2"],
        cwd=ROOT, env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not runs.retrieve(handle.id).is_final:
            assert time.monotonic() < deadline, "outlast_worker did not run the run"
            assert proc.poll() is None, f"outlast_worker exited {proc.returncode}"
            time.sleep(0.1)
        assert runs.retrieve(handle.id).output == "shipped w-1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.django_db
def test_the_dashboard_is_served_to_staff_only(runs: Client) -> None:
    runs.trigger("django-ship", {"number": "d-1"})
    http = DjangoClient()
    anonymous = http.get("/jobs/runs")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    http.force_login(User.objects.create_user("ana", is_staff=False))
    assert http.get("/jobs/runs").status_code == 302

    http.force_login(User.objects.create_user("bo", is_staff=True))
    page = http.get("/jobs/runs")
    assert page.status_code == 200
    text = page.content.decode()
    assert "django-ship" in text
    assert 'href="/jobs/runs' in text and 'href="/runs' not in text
    assert http.get("/jobs/dashboard-static/app.css").status_code == 200
    assert http.get("/jobs/api/v1/health").status_code == 404  # the API is outlast server's
    home = http.get("/jobs/")
    assert home.status_code in (302, 303, 307) and home["Location"].startswith("/jobs/runs")


@pytest.mark.django_db(transaction=True)
def test_in_transaction_mode_outside_a_transaction_writes_at_once(
    runs: Client, settings: Any
) -> None:
    settings.OUTLAST = {**settings.OUTLAST, "TRIGGER": "in_transaction"}
    pending = trigger(ship, {"number": "n-1"})  # Django autocommits here
    assert pending.committed
    assert runs.retrieve(pending.id).payload == {"number": "n-1"}


def test_unknown_settings_keys_are_named(settings: Any) -> None:
    settings.OUTLAST = {"ENVIRONMENT": "prod"}
    with pytest.raises(ConfigurationError, match="ENVIRONMENT"):
        trigger(ship, {"number": "x"})
    settings.OUTLAST = {"TRIGGER": "eventually"}
    with pytest.raises(ConfigurationError, match="TRIGGER"):
        trigger(ship, {"number": "x"})


@pytest.mark.django_db
def test_a_dashboard_form_posts_through_django(runs: Client) -> None:
    run_id = runs.trigger("django-ship", {"number": "f-1"}).id
    http = DjangoClient()
    http.force_login(User.objects.create_user("cy", is_staff=True))
    page = http.get(f"/jobs/runs/{run_id}").content.decode()
    assert f'action="/jobs/runs/{run_id}/replay"' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    # As a browser sends the dashboard's forms: URL-encoded.
    answer = http.post(f"/jobs/runs/{run_id}/replay", urlencode({"csrf": csrf.group(1)}),
                       content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 303 and answer["Location"].startswith("/jobs/runs/")
    assert [r.id for r in runs.list_runs() if r.replayed_from == run_id] != []
