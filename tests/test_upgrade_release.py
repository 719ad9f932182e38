"""Upgrading outlast without downtime, across real releases, on PostgreSQL.

Release N-1 is an earlier commit of this repository: the one whose message carries
``[upgrade-test base: release N-1]``. It already has the expand-then-contract logic (a
release can only tolerate a newer schema if it was written to), and this code (release
N) adds a real expand migration after it (``process_endpoints``). N-1 is exported with
``git archive`` and run from a venv of its own (its dependencies are this venv's, put on
its path by a .pth file: they are the same packages, and the test stays seconds long).

While N-1 workers drain a backlog, release N migrates and starts; N-1 keeps completing
runs after the migration, a fresh N-1 worker still starts on the new schema, and
`outlast migrate --check` lists which process runs which release. As a control, the
release before the expand-then-contract logic refuses to start on the same schema.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outlast.client import Client
from outlast.store import open_store
from outlast.store._schema_base import CONTRACT, migration_files
from outlast.store._sql import SCHEMA_VERSION
from tests.conftest import ROOT, _pg_url, drop_pg_database
from tests.test_migrations import new_empty_pg_database, raw

MARKER = "[upgrade-test base: release N-1]"

APP = textwrap.dedent('''
    import asyncio
    import os
    from outlast import step, task

    def double(n):
        return n * 2

    @task(id="upgrade-work")
    async def work(payload):
        await asyncio.sleep(payload.get("sleep", 0.03))
        return {"n": await step.run("double", double, payload["n"]), "pid": os.getpid()}
''')


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def _base_commit() -> str:
    found = _git("log", "--all", "--format=%H", "--fixed-strings", f"--grep={MARKER}", "-n1")
    if not found:
        pytest.fail(f"no commit with {MARKER!r} in this clone's history: the upgrade test "
                    "needs release N-1 (a full clone, not a shallow one)", pytrace=False)
    return found


def _release(commit: str, into: Path) -> Path:
    """The outlast of ``commit`` in a venv of its own; returns its python."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit, "outlast"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(into / "venv")],
                   check=True)
    python = into / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Its own outlast first; the shared dependencies after (a plain path entry: this
    # venv's editable outlast hook, a .pth of its own, is not read from there).
    Path(site, "release.pth").write_text(f"{src}\n{sysconfig.get_paths()['purelib']}\n")
    return python


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = _base_commit()
    root = tmp_path_factory.mktemp("releases")
    return {"previous": _release(base, root / "previous"),
            "pre_upgrades": _release(f"{base}^2", root / "pre_upgrades")}


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    name = new_empty_pg_database()
    try:
        yield _pg_url(name)
    finally:
        drop_pg_database(name)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OUTLAST_LOG_LEVEL": "WARNING"}


class Releases:
    def __init__(self, url: str, app_dir: Path, pythons: dict[str, Path]) -> None:
        self.url, self.app_dir, self.pythons = url, app_dir, pythons
        self.procs: list[subprocess.Popen[bytes]] = []

    def python(self, release: str) -> str:
        return sys.executable if release == "current" else str(self.pythons[release])

    def run(self, release: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = _env() if release != "current" else {**_env(), "PYTHONPATH": str(ROOT)}
        return subprocess.run([self.python(release), "-m", "outlast", *args,
                               "--database-url", self.url], cwd=self.app_dir, env=env,
                              capture_output=True, text=True, timeout=60)

    def worker(self, release: str) -> subprocess.Popen[bytes]:
        env = _env() if release != "current" else {**_env(), "PYTHONPATH": str(ROOT)}
        p = subprocess.Popen([self.python(release), "-m", "outlast", "worker", "--app",
                              "upgrade_app.py", "--env", "dev", "--concurrency", "4",
                              "--database-url", self.url], cwd=self.app_dir, env=env)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _worker_id(url: str, pid: int) -> str:
    rows = raw(url, f"SELECT id FROM workers WHERE pid = {pid} AND status = 'alive'")
    return str(rows[0][0]) if rows else ""


def test_previous_release_keeps_completing_runs_while_the_new_one_migrates_and_starts(
    releases: dict[str, Path], fresh_pg: str, tmp_path: Path,
) -> None:
    (tmp_path / "upgrade_app.py").write_text(APP)
    r = Releases(fresh_pg, tmp_path, releases)
    try:
        done = r.run("previous", "migrate")
        assert done.returncode == 0, done.stderr
        assert "process_endpoints" not in str(raw(fresh_pg, "SELECT name FROM outlast_migrations"))

        old1 = r.worker("previous")
        old1_id = _wait("the N-1 worker to register", lambda: _worker_id(fresh_pg, old1.pid))
        trigger = ("from outlast.client import Client; from outlast.store import open_store\n"
                   f"c = Client(store=open_store({fresh_pg!r}), env='dev')\n"
                   "c.batch_trigger('upgrade-work', [{'n': i} for i in range(240)])\n")
        subprocess.run([r.python("previous"), "-c", trigger], env=_env(), check=True,
                       cwd=tmp_path, timeout=60)
        _wait("N-1 to complete runs", lambda: raw(
            fresh_pg, "SELECT COUNT(*) FROM runs WHERE status = 'COMPLETED'")[0][0] >= 20)

        # Release N migrates under the running N-1 worker: its expand migrations at once,
        # its contract migrations (if any) wait for the N-1 processes to go.
        previous = {str(n) for (n,) in raw(fresh_pg, "SELECT name FROM outlast_migrations")}
        contracts = {m.name for m in migration_files("postgres")
                     if m.kind == CONTRACT and m.name not in previous}
        migrated = r.run("current", "migrate")
        assert migrated.returncode == 0, migrated.stderr
        [(applied_at,)] = raw(fresh_pg, "SELECT applied_at FROM outlast_migrations "
                                        "WHERE name = 'process_endpoints'")
        applied = {str(n) for (n,) in raw(fresh_pg, "SELECT name FROM outlast_migrations")}
        assert applied == {m.name for m in migration_files("postgres")} - contracts
        if not contracts:
            assert raw(fresh_pg, "SELECT version FROM outlast_schema") == [(SCHEMA_VERSION,)]
        assert old1.poll() is None

        # A fresh N-1 worker starts on the new schema; N starts too; N triggers more, once
        # both are up, each run long enough (0.2 s, 12 slots: about 2 s in all) that
        # every worker gets some whatever the load on the machine.
        old2 = r.worker("previous")
        new = r.worker("current")
        old2_id = _wait("a fresh N-1 worker to start", lambda: _worker_id(fresh_pg, old2.pid))
        new_id = _wait("the N worker to start", lambda: _worker_id(fresh_pg, new.pid))
        store = open_store(fresh_pg)
        try:
            Client(store=store, env="dev").batch_trigger(
                "upgrade-work", [{"n": 1000 + i, "sleep": 0.2} for i in range(120)])
        finally:
            store.close()

        checked = r.run("current", "migrate", "--check", "--json")
        # exit 1: the contract step still waits
        assert checked.returncode == (1 if contracts else 0), checked.stdout + checked.stderr
        listed = {p["id"]: p["schema_version"] for p in json.loads(checked.stdout)["processes"]}
        assert listed[new_id] == SCHEMA_VERSION
        assert listed[old1_id] == listed[old2_id] < SCHEMA_VERSION

        _wait("every run to complete", lambda: raw(
            fresh_pg, "SELECT COUNT(*) FROM runs WHERE status <> 'COMPLETED'")[0][0] == 0,
            timeout=60)
        rows = raw(fresh_pg, "SELECT finished_at, attempt, output FROM runs")
        assert len(rows) == 360
        assert all(attempt == 1 for _, attempt, _ in rows)  # no run lost its worker
        # Which process completed each run after the migration (the task returns its pid).
        after = [json.loads(out)["pid"] for finished, _, out in rows if finished > applied_at]
        assert after.count(old1.pid) > 0, "the N-1 worker stopped completing runs"
        assert after.count(old2.pid) > 0, "the fresh N-1 worker completed nothing"
        assert old1.poll() is None and old2.poll() is None

        # The contract step once the N-1 workers are gone. Usage hands over from the
        # runs_finished watermark (which N-1 and N folded behind) to the outbox (which
        # only N wrote): every run counted once, whichever release finished it.
        for p in (old1, old2):
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        contracted = r.run("current", "migrate", "--contract")
        assert contracted.returncode == 0, contracted.stdout + contracted.stderr
        assert raw(fresh_pg, "SELECT version FROM outlast_schema") == [(SCHEMA_VERSION,)]
        store = open_store(fresh_pg)
        try:
            while store.aggregate_usage(grace=0.0):
                pass
            assert sum(d.runs for d in store.usage_days("dev", 0.0)) == 360
            assert raw(fresh_pg, "SELECT SUM(runs) FROM usage_daily") == [(360,)]
        finally:
            store.close()
    finally:
        r.stop_all()
    assert [p.returncode for p in r.procs] == [0, 0, 0]
    # With the N-1 processes gone, the contract step applies the rest.
    contracted = r.run("current", "migrate", "--contract")
    assert contracted.returncode == 0, contracted.stderr
    assert raw(fresh_pg, "SELECT version FROM outlast_schema") == [(SCHEMA_VERSION,)]


def test_a_release_without_expand_contract_refuses_the_newer_schema(
    releases: dict[str, Path], fresh_pg: str, tmp_path: Path,
) -> None:
    """The control: before this mechanism, any newer schema stopped an older worker
    (which is why the test above can fail)."""
    (tmp_path / "upgrade_app.py").write_text(APP)
    r = Releases(fresh_pg, tmp_path, releases)
    assert r.run("current", "migrate").returncode == 0
    started = r.run("pre_upgrades", "worker", "--app", "upgrade_app.py")
    assert started.returncode == 2
    assert "newer than this outlast" in started.stderr
