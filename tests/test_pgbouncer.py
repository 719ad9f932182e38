"""outlast behind a real PgBouncer (the Debian package, started here on a free port in
front of the shared PostgreSQL), in session and in transaction pooling mode.

Without OUTLAST_DATABASE_DIRECT_URL a worker refuses to start, naming the setting (its
life lock needs a session of its own). With it, session features (the life lock,
LISTEN) use the direct URL and everything else the pooler: a worker completes runs with
steps and waits, and a SIGKILLed worker's run is re-queued through its life lock (well
inside the 30 s lease) and completed by another worker."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outlast._doctor import Context, run_checks
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store._pg_session import behind_pooler
from tests.apps import pgbouncer_app as app
from tests.conftest import _pg_url, drop_pg_database, new_pg_database

ROOT = Path(__file__).resolve().parent.parent
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["session", "transaction"])
def bouncer(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """(pooled URL, direct URL, pool mode) of a fresh database behind a PgBouncer."""
    assert os.path.exists(PGBOUNCER), "install the Debian package pgbouncer (scripts/test does)"
    mode = str(request.param)
    tmp = Path(tempfile.mkdtemp(prefix="outlast-pgb-"))
    port = _free_port()
    (tmp / "users.txt").write_text('"postgres" ""\n')
    (tmp / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {tmp / 'users.txt'}\npool_mode = {mode}\n"
        "max_client_conn = 200\ndefault_pool_size = 20\nadmin_users = postgres\n"
    )
    shutil.chown(tmp, "postgres")
    for f in tmp.iterdir():
        shutil.chown(f, "postgres")
    proc = subprocess.Popen([PGBOUNCER, "-u", "postgres", str(tmp / "pgbouncer.ini")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = new_pg_database()
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "pgbouncer did not start"
            time.sleep(0.05)
        yield f"postgresql://postgres@127.0.0.1:{port}/{name}", _pg_url(name), mode
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drop_pg_database(name)
        shutil.rmtree(tmp, ignore_errors=True)


def _worker_argv(url: str) -> list[str]:
    return [sys.executable, "-m", "outlast", "worker", "--app", "tests.apps.pgbouncer_app",
            "--database-url", url, "--env", "dev", "--concurrency", "10"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUTLAST_DATABASE_DIRECT_URL"}
    return {**env, "PYTHONPATH": str(ROOT), "OUTLAST_INPLACE_SLEEP_SECONDS": "0", **extra}


def test_a_pooled_url_is_detected_and_a_direct_one_is_not(
        bouncer: tuple[str, str, str]) -> None:
    pooled, direct, _ = bouncer
    with psycopg.connect(pooled, autocommit=True) as conn:
        assert behind_pooler(conn)
    with psycopg.connect(direct, autocommit=True) as conn:
        assert not behind_pooler(conn)


def test_session_bounds_are_set_on_direct_connections_only(
        bouncer: tuple[str, str, str]) -> None:
    """Through the pooler a session setting would stay on the server connection for other
    clients (transaction mode): outlast sets none there, and on a direct URL its own."""
    pooled, direct, _ = bouncer
    for url, expected in ((direct, "10s"), (pooled, "0")):
        store = open_store(url)
        try:
            with store._pool.connection() as conn:  # type: ignore[attr-defined]
                row = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
            assert row["idle_in_transaction_session_timeout"] == expected, url
        finally:
            store.close()


def test_doctor_warns_when_nothing_bounds_an_idle_transaction_behind_the_pooler(
        bouncer: tuple[str, str, str]) -> None:
    pooled, _, _ = bouncer
    store = open_store(pooled)
    try:
        def findings() -> list[str]:
            ctx = Context(store=store, url=pooled, env="dev", environ={})
            return [f.message for f in run_checks(ctx)[1] if f.check == "idle_transactions"]

        [message] = findings()
        assert "PgBouncer's idle_transaction_timeout is 0" in message
        console = pooled.rpartition("/")[0] + "/pgbouncer"
        with psycopg.connect(console, autocommit=True) as conn:
            conn.execute("SET idle_transaction_timeout = 10")
        assert findings() == []
    finally:
        store.close()


def test_a_worker_refuses_without_a_direct_url(bouncer: tuple[str, str, str]) -> None:
    pooled, direct, _ = bouncer
    store = open_store(direct)
    store.migrate()
    store.close()
    out = subprocess.run(_worker_argv(pooled), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=90)
    assert out.returncode != 0
    assert "OUTLAST_DATABASE_DIRECT_URL" in out.stdout + out.stderr


def test_runs_complete_and_a_killed_worker_is_reaped_behind_pgbouncer(
        bouncer: tuple[str, str, str], tmp_path: Path) -> None:
    pooled, direct, mode = bouncer
    store = open_store(pooled)  # the app's side goes through the pooler too
    store.migrate()
    client = Client(store=store, env="dev")
    env = _env(OUTLAST_DATABASE_DIRECT_URL=direct)
    logs = [open(tmp_path / f"worker-{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    a = subprocess.Popen(_worker_argv(pooled), cwd=ROOT, env=env, stdout=logs[0],
                         stderr=subprocess.STDOUT)
    b: subprocess.Popen[bytes] | None = None
    try:
        handles = client.batch_trigger(app.steps, [{"i": i} for i in range(20)])
        blocked = client.trigger(app.block, {})

        def status(run_id: str) -> RunStatus:
            run = client.retrieve(run_id)
            return run.status

        deadline = time.monotonic() + 90
        while not (all(status(h.id) == RunStatus.COMPLETED for h in handles)
                   and status(blocked.id) == RunStatus.EXECUTING):
            assert a.poll() is None, (tmp_path / "worker-0.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker-0.log").read_text()
            time.sleep(0.2)
        assert {client.retrieve(h.id).output for h in handles} == {2}
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed_at = time.monotonic()
        b = subprocess.Popen(_worker_argv(pooled), cwd=ROOT, env=env, stdout=logs[1],
                             stderr=subprocess.STDOUT)
        while status(blocked.id) != RunStatus.COMPLETED:
            assert b.poll() is None, (tmp_path / "worker-1.log").read_text()
            assert time.monotonic() - killed_at < 25, f"not reaped ({mode} mode)"
            time.sleep(0.2)
        run = client.retrieve(blocked.id)
        assert run.output == "done" and run.attempt == 2
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        for f in logs:
            f.close()
        store.close()
