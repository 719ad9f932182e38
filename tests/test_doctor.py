"""`outlast doctor`: each problem staged on real SQLite and PostgreSQL (where it applies)
is reported with what to do, a healthy install reports nothing, and the exit code and
--json say the same."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from outlast import cli, queue, task
from outlast._clock import FakeClock
from outlast._doctor import PROBLEM, WARNING, Context, Finding, run_checks
from outlast.client import Client
from outlast.store import Store, _sql_schema, open_store
from outlast.store._schema_base import Migration, migration_files
from outlast.store._sql import SCHEMA_VERSION
from outlast.store.base import WorkerInfo

TASK = "doc-task"


@task(id=TASK)
async def doc_task(payload: dict[str, Any]) -> None:
    return None


@task(id="doc-mail", queue=queue("doc-mail"))
async def doc_mail(payload: dict[str, Any]) -> None:
    return None


def by_check(store: Store | None, url: str, **kw: Any) -> dict[str, list[Finding]]:
    ctx = Context(store=store, url=url, env="dev", environ=kw.pop("environ", {}), **kw)
    found: dict[str, list[Finding]] = {}
    for f in run_checks(ctx)[1]:
        found.setdefault(f.check, []).append(f)
    return found


def worker(store: Store, wid: str = "w_1", tasks: tuple[str, ...] = (TASK,)) -> None:
    store.register_worker(WorkerInfo(id=wid, env="dev", host="box", pid=7, concurrency=5,
                                     tasks=list(tasks), lease_seconds=30.0))


def trigger(store: Store, n: int = 1, which: Any = doc_task) -> list[str]:
    client = Client(store=store, env="dev")
    return [h.id for h in client.batch_trigger(which, [{"i": i} for i in range(n)])]


def test_a_healthy_install_reports_nothing(store: Store, db_url: str) -> None:
    worker(store)
    trigger(store, 3)  # queued runs of a task a live worker serves are fine
    ran, findings = run_checks(Context(store=store, url=db_url, env="dev", environ={}))
    assert findings == []
    assert {"schema", "clock_skew", "connections", "stale_workers", "stuck_runs",
            "paused_queues", "tasks_without_workers", "dashboard",
            "sqlite_filesystem"} <= set(ran)


def test_the_cli_exits_zero_when_healthy_and_one_on_a_problem_with_json(
    db_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["doctor", "--database-url", db_url]) == 0
    assert "checks passed" in capsys.readouterr().out
    s = open_store(db_url)
    try:
        trigger(s)  # a queued run no worker serves
    finally:
        s.close()
    assert cli.main(["doctor", "--json", "--database-url", db_url]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    [f] = out["findings"]
    assert f["check"] == "tasks_without_workers" and f["level"] == PROBLEM
    assert "outlast worker --app" in f["fix"]


def test_an_unreachable_database_is_a_problem(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://outlast@127.0.0.1:1/nothing"
    assert cli.main(["doctor", "--json", "--database-url", url]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["findings"][0]["check"] == "database"
    assert "OUTLAST_DATABASE_URL" in out["findings"][0]["fix"]


def test_a_missing_sqlite_file_is_a_problem_and_doctor_does_not_create_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "nowhere" / "outlast.db"
    assert cli.main(["doctor", "--json", "--database-url", f"sqlite:///{path}"]) == 1
    [f] = json.loads(capsys.readouterr().out)["findings"]
    assert f["check"] == "database" and "outlast migrate" in f["message"]
    assert not path.parent.exists()


def test_a_schema_that_is_not_current_is_a_problem(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgres"
    extra = Migration(SCHEMA_VERSION + 1, "doctor_probe", "expand", "SELECT 1;\n")
    monkeypatch.setattr(_sql_schema, "migration_files",
                        lambda d: [*migration_files(dialect), extra])
    [f] = by_check(store, db_url)["schema"]
    assert f.level == PROBLEM and "doctor_probe" in f.message and "outlast migrate" in f.fix


def test_clock_skew_between_this_host_and_postgresql(store: Store, db_url: str) -> None:
    if db_url.startswith("sqlite"):
        assert "clock_skew" not in by_check(store, db_url, wall=lambda: time.time() + 60)
        return  # SQLite's clock is this host's
    [f] = by_check(store, db_url, wall=lambda: time.time() + 60)["clock_skew"]
    assert f.level == PROBLEM and "60" in f.message and "ahead of" in f.message
    [f] = by_check(store, db_url, wall=lambda: time.time() - 2)["clock_skew"]
    assert f.level == WARNING and "behind" in f.message
    assert "clock_skew" not in by_check(store, db_url, wall=time.time)


def test_sessions_idle_in_a_transaction_unbounded_is_a_warning(
    store: Store, db_url: str,
) -> None:
    if db_url.startswith("sqlite"):
        assert "idle_transactions" not in by_check(store, db_url)
        return  # a frozen SQLite writer holds the write lock: nothing can bound it
    assert "idle_transactions" not in by_check(store, db_url)  # outlast's 10 s default
    assert "idle_transactions" not in by_check(
        store, db_url, environ={"OUTLAST_PG_IDLE_TX_TIMEOUT": "3"})
    [f] = by_check(store, db_url, environ={"OUTLAST_PG_IDLE_TX_TIMEOUT": "0"})[
        "idle_transactions"]
    assert f.level == WARNING and "OUTLAST_PG_IDLE_TX_TIMEOUT=0" in f.message
    assert "idle_transactions" in run_checks(
        Context(store=store, url=db_url, env="dev", environ={}))[0]


def test_more_processes_than_postgresql_max_connections_is_a_problem(
    store: Store, db_url: str,
) -> None:
    if db_url.startswith("sqlite"):
        assert "connections" not in by_check(store, db_url)
        return
    info = store.doctor_database()  # type: ignore[attr-defined]
    room = int(info["max_connections"]) - int(info["reserved"])
    for i in range(math.ceil(room / 10) + 1):
        worker(store, f"w_{i}")
    [f] = by_check(store, db_url)["connections"]
    assert f.level == PROBLEM and "max_connections" in f.message and "PgBouncer" in f.fix


def test_stale_heartbeats_and_runs_stuck_past_their_lease(
    store: Store, db_url: str, clock: FakeClock,
) -> None:
    worker(store)
    [run_id] = trigger(store)
    claimed = store.claim("w_1", "dev", {doc_task.queue.name: [TASK]}, 1)
    assert [c.run.id for c in claimed] == [run_id]
    clock.advance(40)  # lease lapsed, but a reaper has a minute before it counts
    assert by_check(store, db_url) == {}
    clock.advance(60)
    found = by_check(store, db_url)
    [stale] = found["stale_workers"]
    assert "w_1" in stale.message and "outlast server" in stale.fix
    [stuck] = found["stuck_runs"]
    assert run_id in stuck.message and stuck.level == PROBLEM


def test_a_paused_queue_with_a_backlog_is_a_warning(store: Store, db_url: str) -> None:
    worker(store, tasks=("doc-mail",))
    trigger(store, 2, doc_mail)
    assert "paused_queues" not in by_check(store, db_url)
    Client(store=store, env="dev").pause_queue("doc-mail")
    [f] = by_check(store, db_url)["paused_queues"]
    assert f.level == WARNING and "2 runs" in f.message and "queues resume doc-mail" in f.fix


def test_queued_runs_of_a_task_no_live_worker_serves(store: Store, db_url: str) -> None:
    worker(store, tasks=("another-task",))
    trigger(store, 2)
    [f] = by_check(store, db_url)["tasks_without_workers"]
    assert TASK in f.message and "2 queued" in f.message
    worker(store, "w_2")
    assert "tasks_without_workers" not in by_check(store, db_url)


def test_a_dashboard_without_a_password_on_a_non_loopback_address(
    store: Store, db_url: str,
) -> None:
    opened = {"OUTLAST_DASHBOARD_OPEN": "1", "OUTLAST_HOST": "0.0.0.0"}
    [f] = by_check(store, db_url, environ=opened)["dashboard"]
    assert f.level == PROBLEM and "OUTLAST_DASHBOARD_PASSWORD" in f.fix
    assert "dashboard" not in by_check(store, db_url, environ={**opened, "OUTLAST_HOST":
                                                                "127.0.0.1"})
    assert "dashboard" not in by_check(store, db_url, environ={
        **opened, "OUTLAST_DASHBOARD_PASSWORD": "s3cret"})
    # A running server that recorded an open dashboard on all interfaces.
    store.register_process("server_1", "server", "dev", listen="0.0.0.0:8030",
                           dashboard="open")
    store.register_process("server_2", "server", "dev", listen="127.0.0.1:8030",
                           dashboard="open")
    [f] = by_check(store, db_url)["dashboard"]
    assert "server_1" in f.message and "0.0.0.0:8030" in f.message


def test_sqlite_on_a_network_filesystem_is_a_problem() -> None:
    mounts = ("/dev/vda / ext4 rw 0 0\n"
              "files:/export /mnt/shared nfs4 rw,relatime 0 0\n")
    [f] = by_check(None, "sqlite:////mnt/shared/app/outlast.db", mounts=mounts)[
        "sqlite_filesystem"]
    assert "nfs4" in f.message and "local disk" in f.fix
    assert by_check(None, "sqlite:////srv/app/outlast.db", mounts=mounts) == {}
    assert by_check(None, "postgresql://x@h/db", mounts=mounts) == {}
