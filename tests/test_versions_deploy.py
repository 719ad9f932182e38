"""Deploys with real processes (issue 19, C11): a rolling deploy under runs parked on the
old code, a version's only worker killed with SIGKILL, and ``patched()`` across a kill.

Two versions of one app, ``rollapp``, are written to two directories: v2 renames step
``b`` and inserts a new step before it, so a v1 journal replayed on v2 would fail with
``non_determinism``. Workers are ``outlast worker`` (and, on SQLite, ``outlast dev``)
processes whose PYTHONPATH picks the version's directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from outlast.client import Client
from outlast.explain import why
from outlast.runs import Run, RunStatus
from outlast.store import open_store
from outlast.store.base import Store

from .conftest import ROOT

ENV = "dev"

_COMMON = '''
import os
import time
from pathlib import Path

import outlast
from outlast import step, task, wait

CODE = "{code}"


def note(name: str) -> str:
    return f"{{name}}-{{CODE}}"


def hang_once(name: str) -> str:
    """Blocks the first time (the test kills the worker there), returns after that."""
    ledger = Path(os.environ["ROLL_LEDGER"])
    seen = ledger.read_text() if ledger.exists() else ""
    with ledger.open("a") as f:
        f.write(name + "\\n")
    if name not in seen:
        time.sleep(120)
    return note(name)


@task(id="roll-quick")
async def roll_quick(payload: dict) -> str:
    return CODE
'''

V1 = _COMMON.format(code="v1") + '''

@task(id="roll-sleep")
async def roll_sleep(payload: dict) -> list:
    out = [await step.run("a", note, "a")]
    await wait.sleep(payload["seconds"])
    out.append(await step.run("b", note, "b"))
    return out


@task(id="roll-token")
async def roll_token(payload: dict) -> list:
    out = [await step.run("a", note, "a")]
    token = await wait.create_token(timeout=600)
    got = await wait.for_token(token)
    out.append(await step.run("b", note, "b"))
    out.append(got.output)
    return out


@task(id="roll-patch")
async def roll_patch(payload: dict) -> str:
    await step.run("a", note, "a")
    branch = await step.run("b", note, "b")
    await wait.sleep(payload["seconds"])
    await step.run("c", hang_once, "c")
    return branch
'''

V2 = _COMMON.format(code="v2") + '''

@task(id="roll-sleep")
async def roll_sleep(payload: dict) -> list:
    out = [await step.run("a", note, "a")]
    await wait.sleep(payload["seconds"])
    out.append(await step.run("new-step", note, "new"))
    out.append(await step.run("b-renamed", note, "b"))
    return out


@task(id="roll-token")
async def roll_token(payload: dict) -> list:
    out = [await step.run("a", note, "a")]
    token = await wait.create_token(timeout=600)
    got = await wait.for_token(token)
    out.append(await step.run("new-step", note, "new"))
    out.append(await step.run("b-renamed", note, "b"))
    out.append(got.output)
    return out


@task(id="roll-patch")
async def roll_patch(payload: dict) -> str:
    await step.run("a", note, "a")
    if outlast.patched("new-b"):
        branch = await step.run("b-new", note, "b-new")
    else:
        branch = await step.run("b", note, "b")
    await wait.sleep(payload["seconds"])
    await step.run("c", hang_once, "c")
    return branch
'''


class Deploy:
    """The two versions' code, the processes started from it, a client to look."""

    def __init__(self, db_url: str, tmp: Path) -> None:
        self.db_url = db_url
        self.tmp = tmp
        self.dirs: dict[str, Path] = {}
        for name, src in (("v1", V1), ("v2", V2)):
            d = tmp / name
            d.mkdir()
            (d / "rollapp.py").write_text(src)
            self.dirs[name] = d
        self.store: Store = open_store(db_url)
        self.store.migrate()
        self.client = Client(store=self.store, env=ENV)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ledger = tmp / "ledger.txt"
        self.killed: set[int] = set()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL, as a crash would."""
        self.killed.add(proc.pid)
        proc.kill()
        proc.wait()

    def start(self, code: str, *extra: str, cmd: str = "worker") -> subprocess.Popen[bytes]:
        log = self.tmp / f"{cmd}-{code}-{len(self.procs)}.log"
        argv = [sys.executable, "-m", "outlast", cmd, "--app", "rollapp",
                "--database-url", self.db_url, "--env", ENV, *extra]
        if cmd == "dev":
            argv += ["--no-server", "--no-reload"]
        env = {**os.environ, "PYTHONPATH": f"{self.dirs[code]}{os.pathsep}{ROOT}",
               "ROLL_LEDGER": str(self.ledger)}
        env.pop("OUTLAST_VERSION", None)
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=self.tmp, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        i = self.procs.index(proc)
        found = sorted(self.tmp.glob(f"*-{i}.log"))
        return found[0].read_text(errors="replace")[-3000:] if found else ""

    def runs(self, ids: list[str]) -> list[Run]:
        return self.store.get_runs(ENV, ids)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for p in self.procs:
                code = None if p.pid in self.killed else p.poll()
                assert code is None or code == 0, f"a process died ({code}):\n{self.log_of(p)}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def registered(self, n: int) -> None:
        self.wait_for(f"{n} live workers", lambda: len(self.store.version_workers(ENV)) >= n)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.store.close()


@pytest.fixture
def deploy(db_url: str, tmp_path: Path) -> Iterator[Deploy]:
    d = Deploy(db_url, tmp_path)
    yield d
    d.close()


def _statuses(d: Deploy, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in d.runs(ids):
        out[str(r.status)] = out.get(str(r.status), 0) + 1
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("n", [40, pytest.param(200, marks=pytest.mark.soak)])
def test_rolling_deploy_finishes_parked_runs_on_their_version(
    deploy: Deploy, backend: str, n: int
) -> None:
    """Runs parked under v1 in ``a -> sleep -> b`` and ``a -> token -> b``; v2 renames b
    and inserts a step before it. A v2 worker starts, the v1 worker restarts draining;
    all complete on v1's code, the drain exits 0 by itself, new triggers run on v2. On
    SQLite the old and the new code run under ``outlast dev`` (versions by digest)."""
    d = deploy
    pg = backend == "postgres"
    v1_flags = ("--version", "2026.12.04-1") if pg else ()
    v2_flags = ("--version", "2026.12.04-2") if pg else ()
    old = d.start("v1", "--concurrency", "50", *v1_flags, cmd="worker" if pg else "dev")
    d.registered(1)
    (v1,) = {w.version for w in d.store.version_workers(ENV)}
    sleepers = [h.id for h in d.client.batch_trigger("roll-sleep", [{"seconds": 3}] * n)]
    waiters = [h.id for h in d.client.batch_trigger("roll-token", [{}] * n)]
    ids = sleepers + waiters
    d.wait_for("every run parked", lambda: _statuses(d, ids) == {"WAITING": 2 * n})

    new = d.start("v2", "--concurrency", "50", *v2_flags, cmd="worker" if pg else "dev")
    d.wait_for("the v2 worker", lambda: any(
        w.version != v1 for w in d.store.version_workers(ENV)))
    (v2,) = {w.version for w in d.store.version_workers(ENV)} - {v1}
    _stop(old)
    drain = d.start("v1", "--drain", "--concurrency", "50", *v1_flags)
    tokens = d.client.list_tokens(status="pending", limit=1000)
    assert len(tokens) == n
    for t in tokens:
        d.client.complete_token(t.id, {"ok": True})
    d.wait_for("every run done", lambda: _statuses(d, ids) == {"COMPLETED": 2 * n}, 90)
    for r in d.runs(ids):
        assert r.version == v1
        assert r.output[:2] == ["a-v1", "b-v1"], r.output
        keys = {e.key for e in d.store.journal(r.id)}
        assert {"a", "b"} <= keys and not keys & {"new-step", "b-renamed"}, keys
    assert drain.wait(timeout=30) == 0  # drained: it stopped by itself

    fresh = d.client.trigger("roll-sleep", {"seconds": 0.1})
    run = d.client.wait_for_run(fresh.id, timeout=30)
    assert run.status == RunStatus.COMPLETED and run.version == v2
    assert run.output == ["a-v2", "new-v2", "b-v2"]
    rows = {r["version"]: r for r in d.client.list_versions()}
    assert rows[v1]["retirable"] and rows[v2]["current"]
    _stop(new)


def test_killing_a_versions_only_worker_leaves_its_runs_waiting_until_it_returns(
    deploy: Deploy,
) -> None:
    d = deploy
    w1 = d.start("v1", "--version", "v1")
    d.registered(1)
    ids = [h.id for h in d.client.batch_trigger("roll-sleep", [{"seconds": 2}] * 5)]
    d.wait_for("parked", lambda: _statuses(d, ids) == {"WAITING": 5})
    d.kill(w1)  # the only worker of v1
    d.start("v2", "--version", "v2")
    d.wait_for("v2 live and v1 gone", lambda: {
        w.version for w in d.store.version_workers(ENV)} == {"v2"})
    d.wait_for("timers fired", lambda: _statuses(d, ids) == {"QUEUED": 5})
    time.sleep(1.0)  # v2 is live and idle: it must still leave them alone
    runs = d.runs(ids)
    assert {str(r.status) for r in runs} == {"QUEUED"}
    assert "locked to version v1: no live worker of v1 (5 runs waiting on it)" in why(
        d.store, runs[0])
    d.start("v1", "--version", "v1")
    d.wait_for("done on v1", lambda: _statuses(d, ids) == {"COMPLETED": 5})
    assert all(r.output == ["a-v1", "b-v1"] for r in d.runs(ids))


def test_patched_across_a_kill_gives_the_same_answer(deploy: Deploy) -> None:
    """A run parked on v1 (before the patch) is migrated to the patched v2: it replays
    with patched() False and finishes on the old branch, though its worker is killed
    with SIGKILL after the answer; a new run takes the new branch. Both are journaled."""
    d = deploy
    w1 = d.start("v1", "--version", "v1")
    d.registered(1)
    parked = d.client.trigger("roll-patch", {"seconds": 2}).id
    d.wait_for("parked", lambda: _statuses(d, [parked]) == {"WAITING": 1})
    _stop(w1)
    assert d.client.migrate_runs("v1", "v2") == 1
    w2 = d.start("v2", "--version", "v2")
    d.wait_for("step c reached", lambda: d.ledger.exists() and "c" in d.ledger.read_text())
    d.kill(w2)  # between patched()'s answer and the run's end
    d.ledger.write_text("c\n")  # step c runs through from now on
    d.start("v2", "--version", "v2")
    old = d.client.wait_for_run(parked, timeout=30)
    assert old.status == RunStatus.COMPLETED and old.output == "b-v1", old
    new = d.client.wait_for_run(d.client.trigger("roll-patch", {"seconds": 0.1}).id, 30)
    assert new.status == RunStatus.COMPLETED and new.output == "b-new-v2", new

    def marks(run_id: str) -> list[Any]:
        return [(e.key, e.output) for e in d.store.journal(run_id) if e.kind == "patch"]

    assert marks(parked) == [("patch:new-b", "false")]
    assert marks(new.id) == [("patch:new-b", "true")]
