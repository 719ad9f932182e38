"""The fault suite's harness: worker processes serving tests.apps.fault_app, and a private
PostgreSQL cluster a test may restart (the shared server is never restarted)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from outlast.store import open_store

from ..conftest import ROOT
from ..test_crash import Fleet

APP = "tests.apps.fault_app"
_PG_BIN = Path("/usr/lib/postgresql/15/bin")


class FaultFleet(Fleet):
    """tests/test_crash.py's Fleet, its workers serving the fault app."""

    def spawn(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        argv = [
            sys.executable, "-m", "outlast", "worker", "--app", APP,
            "--database-url", self.db_url, "--env", "dev", *extra,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "OUTLAST_LOG_LEVEL": "INFO",
                     **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        self.flags[proc.pid] = (extra, env or {})
        return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL cluster of this test session's own (initdb as user postgres into a
    temporary directory, its own port), fast and unsafe (fsync off): a test may restart
    it, terminate its sessions, or stop it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="outlast-pg-", dir="/tmp"))
        shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.port = _free_port()
        self.log = self.dir / "server.log"
        self._as_postgres(
            str(_PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )
        self.restarts = 0

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        )

    def _ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            str(_PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "60", "-o", options, *args,
        )

    def start(self) -> None:
        self._ctl("start")

    def restart(self, mode: str = "fast") -> None:
        """Restart the server: every session ends, advisory locks with them."""
        self._ctl("restart", "-m", mode)
        self.restarts += 1

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, migrated database; its URL."""
        name = f"fault_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        store = open_store(self.url(name))
        store.migrate()
        store.close()
        return self.url(name)

    def wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def pg_execute(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql.encode(), params).fetchall())
