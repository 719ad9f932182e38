"""Acceptance: crashes, pauses and shutdowns of real `outlast worker` processes, on both backends.

Workers run as subprocesses serving ``tests.apps.crash_app``; they are killed with SIGKILL,
frozen with SIGSTOP, and stopped with SIGTERM. What happened is read from two places: the
store (run status, attempt, journal, events) and a ledger file that the task code appends
to outside the platform, which counts step-body executions (reliability anchors §5: the
"effect sink"). Each test prints its measured figures (run with ``-s`` to see them).

Timing knobs: workers tick their reaper every 0.25 s and heartbeat every 1 s; the default
lease is 30 s, so a recovery within 2 s can only come from the life lock (C9), and tests of
the lease path give the worker a short ``--lease-seconds``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from outlast.client import Client
from outlast.runs import Run, RunStatus
from outlast.store import open_store
from outlast.store.base import Store

from .apps.crash_app import crash_hold
from .conftest import ROOT

APP = "tests.apps.crash_app"
ENV = "dev"
T = TypeVar("T")


# -- harness ----------------------------------------------------------------------------------


class Fleet:
    """Worker processes of one test, their logs, and a store/client to look at them.

    With ``supervise()`` called from the test's wait loops, a worker that dies is replaced
    by a fresh one with the same flags (a process supervisor, like systemd's Restart=)."""

    def __init__(self, db_url: str, tmp: Path) -> None:
        self.db_url = db_url
        self.tmp = tmp
        self.store: Store = open_store(db_url)
        self.client = Client(store=self.store, env=ENV)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self.flags: dict[int, tuple[tuple[str, ...], dict[str, str]]] = {}
        self.supervised = False
        self.deaths: list[tuple[int, int]] = []  # (pid, returncode) of supervised restarts

    def spawn(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        argv = [
            sys.executable, "-m", "outlast", "worker", "--app", APP,
            "--database-url", self.db_url, "--env", ENV, *extra,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        self.flags[proc.pid] = (extra, env or {})
        return proc

    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Spawn a worker and wait until it is registered (serving) in the store."""
        proc = self.spawn(*extra, env=env)
        self.worker_id(proc)
        return proc

    def start_many(self, n: int, *extra: str) -> list[subprocess.Popen[bytes]]:
        """Spawn ``n`` workers at once (they boot in parallel) and wait for all of them."""
        procs = [self.spawn(*extra) for _ in range(n)]
        for proc in procs:
            self.worker_id(proc)
        return procs

    def worker_id(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
        def alive_row() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"worker {proc.pid} exited early:\n{self.log(proc)}")
            for w in self.store.list_workers(ENV):
                if w["pid"] == proc.pid and w["status"] == "alive":
                    return str(w["id"])
            return None

        return wait_for(f"worker {proc.pid} to register", alive_row, timeout, self)

    def proc_of(self, worker_id: str | None) -> subprocess.Popen[bytes]:
        pids = {w["id"]: w["pid"] for w in self.store.list_workers(ENV)}
        pid = pids.get(worker_id or "")
        found = [p for p in self.procs if p.pid == pid]
        assert found, f"no process of ours holds worker {worker_id!r}"
        return found[0]

    def worker_row(self, worker_id: str) -> dict[str, Any]:
        return next(w for w in self.store.list_workers(ENV) if w["id"] == worker_id)

    def supervise(self) -> None:
        if not self.supervised:
            return
        for proc in list(self.procs):
            if proc.returncode is None and proc.poll() is not None:
                self.deaths.append((proc.pid, proc.returncode))
                extra, env = self.flags[proc.pid]
                self.spawn(*extra, env=env)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def tails(self) -> str:
        return "".join(
            f"\n--- worker {p.pid} (exit {p.poll()}) ---\n{self.log(p)[-3000:]}" for p in self.procs
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL also ends a SIGSTOPped process
        for proc in self.procs:
            proc.wait(timeout=10)
        self.store.close()

    # -- reading the store ----------------------------------------------------------------
    def run(self, run_id: str) -> Run:
        return self.client.retrieve(run_id)

    def wait_final(self, run_ids: list[str], timeout: float) -> list[Run]:
        def all_final() -> list[Run] | None:
            runs = self.store.get_runs(ENV, run_ids)
            return runs if all(r.status.is_final for r in runs) else None

        return wait_for(f"{len(run_ids)} runs to end", all_final, timeout, self)

    def ended(self, task_id: str) -> int:
        """How many runs of ``task_id`` are in a final status (one aggregate query)."""
        counts = self.store.count_runs(ENV).get(task_id, {})
        return sum(n for status, n in counts.items() if RunStatus(status).is_final)

    def failures(self, run_id: str) -> list[dict[str, Any]]:
        """The run's failed attempts: (attempt, error code)."""
        return [
            {"attempt": e.attempt, "code": (e.data or {}).get("code"), "ts": e.ts}
            for e in self.store.events(run_id)
            if e.kind == "attempt_failed"
        ]


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(db_url, tmp_path)
    try:
        yield f
    finally:
        f.close()


def wait_for(what: str, cond: Callable[[], T | None], timeout: float, fleet: Fleet) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{fleet.tails()}")
        fleet.supervise()
        time.sleep(0.02)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def begins(ledger: Path, run_id: str, step_name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in read_ledger(ledger)
        if e["run"] == run_id and e.get("step") == step_name and e["ev"] == "begin"
    ]


def figure(name: str, value: str) -> None:
    print(f"\nFIGURE {name}: {value}")


def kill(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL ``proc``; returns the monotonic time at which it was gone."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    return time.monotonic()


# -- 1. SIGKILL mid-step: resume elsewhere, via the life lock -------------------------------


def test_sigkill_mid_step_resumes_on_another_worker_via_life_lock(
    fleet: Fleet, tmp_path: Path, backend: str
) -> None:
    """C2, C3, C9: completed steps are not re-run, the interrupted one is, on another
    process; the dead worker's run is re-queued within 2 s although its lease had 30 s left."""
    a, b = fleet.start_many(2)
    ledger, gate = tmp_path / "ledger.jsonl", tmp_path / "gate"
    run_id = fleet.client.trigger("crash-steps", {"ledger": str(ledger), "gate": str(gate)}).id
    wait_for("step two to begin", lambda: begins(ledger, run_id, "two"), 10, fleet)

    holder = fleet.run(run_id).worker_id
    assert holder is not None
    victim = fleet.proc_of(holder)
    survivor = b if victim is a else a
    lease_left = fleet.worker_row(holder)["lease_expires_at"] - fleet.store.now()
    killed_at = kill(victim)

    requeued = wait_for(
        "the run to be re-queued",
        lambda: (r := fleet.run(run_id)).attempt == 2 and r,
        10,
        fleet,
    )
    latency = time.monotonic() - killed_at
    gate.touch()
    [run] = fleet.wait_final([run_id], 10)

    figure(f"{backend} re-queue after SIGKILL via life lock", f"{latency:.3f} s "
           f"(lease had {lease_left:.1f} s left)")
    assert requeued.attempt == 2
    assert latency < 2.0, f"re-queue took {latency:.2f} s: the life lock path did not work"
    assert fleet.worker_row(holder)["status"] == "dead"
    [lost] = fleet.failures(run_id)
    assert lost["attempt"] == 1 and lost["code"] == "worker_lost"
    assert lost["ts"] < fleet.worker_row(holder)["lease_expires_at"], "reaped by lease, not lock"

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.attempt == 2
    # Step one ran once, in the victim; step two ran in both; three only in the survivor.
    assert [e["pid"] for e in begins(ledger, run_id, "one")] == [victim.pid]
    assert [(e["pid"], e["attempt"]) for e in begins(ledger, run_id, "two")] == [
        (victim.pid, 1),
        (survivor.pid, 2),
    ]
    assert [e["pid"] for e in begins(ledger, run_id, "three")] == [survivor.pid]
    assert run.output == {
        "one": f"one@{victim.pid}",  # the memoized result, not a re-run
        "two": f"two@{survivor.pid}",
        "three": f"three@{survivor.pid}",
    }
    journal = {j.key: j.attempt for j in fleet.store.journal(run_id)}
    assert journal == {"one": 1, "two": 2, "three": 2}


# -- 2. lock disabled: the lease still recovers the run -------------------------------------


LEASE = 3.0


def test_without_life_lock_the_lease_recovers_the_run(
    fleet: Fleet, tmp_path: Path, backend: str
) -> None:
    """The lease is the fallback (C4, C9): a worker without a life lock is reaped once its
    lease lapses, by the database's clock, and not before."""
    a = fleet.start("--no-life-lock", "--lease-seconds", str(LEASE))
    ledger, gate = tmp_path / "ledger.jsonl", tmp_path / "gate"
    run_id = fleet.client.trigger("crash-steps", {"ledger": str(ledger), "gate": str(gate)}).id
    wait_for("step two to begin", lambda: begins(ledger, run_id, "two"), 10, fleet)
    b = fleet.start()  # the survivor, whose reaper must find the lapsed lease
    holder = fleet.run(run_id).worker_id
    assert holder is not None and fleet.proc_of(holder) is a
    killed_at = kill(a)

    wait_for("the run to be re-queued", lambda: fleet.run(run_id).attempt == 2, 15, fleet)
    latency = time.monotonic() - killed_at
    gate.touch()
    [run] = fleet.wait_final([run_id], 10)

    expires = fleet.worker_row(holder)["lease_expires_at"]  # final: nobody heartbeats it now
    [lost] = fleet.failures(run_id)
    figure(f"{backend} re-queue after SIGKILL via lease ({LEASE:g} s)", f"{latency:.3f} s, "
           f"{lost['ts'] - expires:.3f} s after the lease expired")
    assert lost["code"] == "worker_lost"
    assert lost["ts"] >= expires, "the run was re-queued before the lease expired"
    # Heartbeats come every second, so the last one left about LEASE - 1 s or more to run;
    # the lock path takes ~0.2 s.
    assert LEASE - 1.5 <= latency <= LEASE + 2.0
    assert run.status == RunStatus.COMPLETED, run.error
    assert [e["pid"] for e in begins(ledger, run_id, "one")] == [a.pid]
    assert [e["pid"] for e in begins(ledger, run_id, "two")] == [a.pid, b.pid]
    assert run.output["two"] == f"two@{b.pid}"


# -- 3. a task that kills its worker every time ----------------------------------------------


def test_poison_task_fails_after_max_attempts_and_workers_keep_serving(
    fleet: Fleet, tmp_path: Path, backend: str
) -> None:
    """A lost worker spends an attempt, so a task that kills its worker cannot loop for
    ever: FAILED with worker_lost after max_attempts (3); restarted workers serve the rest."""
    fleet.supervised = True
    fleet.start_many(2, "--concurrency", "4")
    ledger = tmp_path / "ledger.jsonl"
    item = {"ledger": str(ledger)}
    before = [h.id for h in fleet.client.batch_trigger("crash-append", [item] * 30)]
    poison = fleet.client.trigger("crash-poison", item).id
    started = time.monotonic()
    [bad] = fleet.wait_final([poison], 30)
    took = time.monotonic() - started
    after = [h.id for h in fleet.client.batch_trigger("crash-append", [item] * 20)]
    runs = fleet.wait_final(before + after, 30)
    fleet.supervise()  # record the last death, should no wait loop have seen it yet

    figure(f"{backend} poison run FAILED after", f"{took:.2f} s, {len(fleet.deaths)} kills")
    assert bad.status == RunStatus.FAILED
    assert bad.error is not None and bad.error["code"] == "worker_lost"
    assert bad.attempt == bad.max_attempts == 3
    assert [f["attempt"] for f in fleet.failures(poison)] == [1, 2, 3]
    booms = begins(ledger, poison, "boom")
    assert [e["attempt"] for e in booms] == [1, 2, 3]
    # Each attempt killed the process that ran it, and nothing else killed any worker.
    assert sorted(pid for pid, _ in fleet.deaths) == sorted(e["pid"] for e in booms)
    assert all(code == -signal.SIGKILL for _, code in fleet.deaths)
    assert all(r.status == RunStatus.COMPLETED for r in runs), [r.error for r in runs]
    live = {p.pid for p in fleet.procs if p.poll() is None}
    served_after = {e["pid"] for e in read_ledger(ledger) if e["run"] in set(after)}
    assert served_after and served_after <= live


# -- 4. two workers racing over 1,000 runs ----------------------------------------------------


def test_two_workers_race_over_1000_runs_each_executed_once(
    fleet: Fleet, tmp_path: Path, backend: str
) -> None:
    """C4: claims never overlap; every run executes exactly once and completes."""
    a, b = fleet.start_many(2, "--concurrency", "25")
    ledger = tmp_path / "ledger.jsonl"
    started = time.monotonic()
    ids = [
        h.id
        for h in fleet.client.batch_trigger(
            # The first 50 runs hold a slot for 2 s: the first worker to claim fills its
            # 25 slots with them and must leave 25 queued, so the other one gets work even
            # when it reaches its claim loop a second after registering (a loaded CI box);
            # the rest take 5 ms each and are raced for (this asserts overlap, not speed).
            "crash-append",
            [
                {"ledger": str(ledger), "n": i, "sleep": 2.0 if i < 50 else 0.005}
                for i in range(1000)
            ],
        )
    ]
    # Count, not fetch: reading 1,000 runs every 20 ms would compete with the workers.
    wait_for("1,000 runs to end", lambda: fleet.ended("crash-append") == 1000, 60, fleet)
    took = time.monotonic() - started
    runs = fleet.store.get_runs(ENV, ids)

    lines = read_ledger(ledger)
    by_pid = {p.pid: sum(1 for e in lines if e["pid"] == p.pid) for p in (a, b)}
    figure(f"{backend} 1,000 runs on 2 workers", f"{took:.2f} s, split {sorted(by_pid.values())}")
    assert all(r.status == RunStatus.COMPLETED for r in runs)
    assert [r.output for r in runs] == list(range(1000))
    assert len(lines) == 1000, "some run executed more than once (or not at all)"
    assert sorted(e["run"] for e in lines) == sorted(ids)
    assert all(e["attempt"] == 1 for e in lines)
    assert all(n > 0 for n in by_pid.values()), f"no race: one worker took everything {by_pid}"


# -- 4b. runs held DEQUEUED by a worker that dies ---------------------------------------------


def test_a_dead_workers_dequeued_runs_recover_and_a_poison_run_still_fails(
    fleet: Fleet, tmp_path: Path, backend: str
) -> None:
    """C9 and C5 with hand-over: a worker holds successors of a limit-2 queue DEQUEUED and
    starts one in memory, in the slot a run leaves, before that start commits. A poison
    run kills its worker as it starts, at times while DEQUEUED runs are held: those go
    back to the queue with their attempt unspent and complete on the next worker. The
    poison run still fails after its three attempts: lost while DEQUEUED it is never held
    DEQUEUED again, so each later death counts. Code never runs more than two at once,
    and every slot comes back."""
    fleet.supervised = True
    fleet.start("--concurrency", "5")
    ledger = tmp_path / "ledger.jsonl"
    n = 150
    items = [{"ledger": str(ledger), "n": i, "sleep": 0.01} for i in range(n)]
    # Runs executing beside the poison run lose attempts with it (C9): give them room.
    ids = [h.id for h in fleet.client.batch_trigger("crash-limited", items[:60], max_attempts=10)]
    bad = fleet.client.trigger("crash-limited", {"ledger": str(ledger), "poison": True}).id
    ids += [h.id for h in fleet.client.batch_trigger("crash-limited", items[60:], max_attempts=10)]
    wait_for(f"{n + 1} runs to end", lambda: fleet.ended("crash-limited") == n + 1, 120, fleet)
    runs = fleet.store.get_runs(ENV, ids)
    poison = fleet.run(bad)

    assert poison.status == RunStatus.FAILED and poison.attempt == 3
    assert [r.status for r in runs] == [RunStatus.COMPLETED] * n
    assert [r.output for r in runs] == list(range(n))
    lost = {r.id: [e for e in fleet.store.events(r.id) if e.kind == "dequeued_lost"] for r in runs}
    lost[bad] = [e for e in fleet.store.events(bad) if e.kind == "dequeued_lost"]
    assert len(lost[bad]) <= 1  # lost once while DEQUEUED at most, then never held again
    assert 3 <= len(fleet.deaths) == 3 + len(lost[bad])
    held = sum(len(v) for v in lost.values())
    figure(f"{backend} runs held DEQUEUED by killed workers", str(held))
    assert held >= 1  # the case this test is for happened
    for r in runs:  # attempts are spent by failures only: a loss while DEQUEUED spends none
        assert r.attempt == 1 + len(fleet.failures(r.id))

    lines = read_ledger(ledger)
    # An attempt is a begin and an end line in one process; only a kill leaves one open,
    # and the database saw each such attempt lost with its worker.
    dead = {pid for pid, _ in fleet.deaths}
    for e in cut_short(lines):
        assert e["pid"] in dead, e
        seen = {(ev.kind, ev.attempt) for ev in fleet.store.events(e["run"])}
        lost = {("attempt_failed", e["attempt"]), ("dequeued_lost", e["attempt"])}
        assert e["run"] == bad or lost & seen, (e, seen)
    peak = peak_executing(lines, bad)
    assert peak <= 2, f"{peak} runs of a limit-2 queue executed at once"
    (q,) = [q for q in fleet.store.list_queues(ENV) if q["name"] == "crash-limited"]
    assert q["executing"] == 0


def _attempt(e: dict[str, Any]) -> tuple[str, int, int]:
    return (e["run"], e["attempt"], e["pid"])


def cut_short(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Begin lines of attempts that wrote no end line in their own process."""
    ended = {_attempt(e) for e in lines if e["ev"] == "end"}
    return [e for e in lines if e["ev"] == "begin" and _attempt(e) not in ended]


def peak_executing(lines: list[dict[str, Any]], poison: str) -> int:
    """The most attempts executing at any moment, from crash-limited's begin/end lines.

    An attempt is its begin and end in one process: a run lost while DEQUEUED may have
    begun before its worker died and keeps its attempt number, so the same (run, attempt)
    can begin again in another process, with an end line that is not the first one's.
    An attempt with no end in its process was cut short by the poison run, which kills its
    process right after writing its begin line, with no await between: that line is the
    process's last, and every attempt open in the process, the poison's too, executed
    until just after it."""
    begins = [e for e in lines if e["ev"] == "begin"]
    keys = [_attempt(e) for e in begins]
    assert len(set(keys)) == len(keys), "an attempt began twice in one process"
    ends = {_attempt(e): e["t"] for e in lines if e["ev"] == "end"}
    kills: dict[int, float | None] = {}
    for e in lines:  # ledger order is write order: the last line of each pid wins
        kills[e["pid"]] = e["t"] if e["run"] == poison and e["ev"] == "begin" else None
    # (time, order, step): at equal times an end line sorts before a begin (a slot handed
    # over), and a kill after every begin of its moment.
    edges: list[tuple[float, int, int]] = []
    for e, key in zip(begins, keys, strict=True):
        edges.append((e["t"], 1, 1))
        if key in ends:
            edges.append((ends[key], 0, -1))
        else:
            kill = kills[e["pid"]]
            assert kill is not None, f"code of {e} was cut short, but not by the poison run"
            edges.append((kill, 2, -1))
    running = peak = 0
    for _, _, step_ in sorted(edges):
        running += step_
        peak = max(peak, running)
    return peak


def test_peak_executing_pairs_an_attempt_within_its_process() -> None:
    """The ledger of a flaky failure: R began from DEQUEUED in pid 1, the poison killed
    pid 1, R came back with its attempt unspent and ran in pid 2 beside S. Two at most,
    though pairing R's first begin with its end in pid 2 would make it three."""
    lines = [
        {"pid": 1, "run": "R", "attempt": 1, "ev": "begin", "t": 10.00},
        {"pid": 1, "run": "P", "attempt": 1, "ev": "begin", "t": 10.05},
        {"pid": 2, "run": "R", "attempt": 1, "ev": "begin", "t": 15.00},
        {"pid": 2, "run": "S", "attempt": 1, "ev": "begin", "t": 15.01},
        {"pid": 2, "run": "R", "attempt": 1, "ev": "end", "t": 15.02},
        {"pid": 2, "run": "S", "attempt": 1, "ev": "end", "t": 15.03},
    ]
    assert peak_executing(lines, "P") == 2
    # The poison counts with what it cuts short: pid 1 ran R and P when X ran too.
    x = [
        {"pid": 9, "run": "X", "attempt": 1, "ev": ev, "t": t}
        for ev, t in (("begin", 10.01), ("end", 10.06))
    ]
    assert peak_executing(lines + x, "P") == 3
    # Three at once is still caught: a third attempt inside R and S's span.
    third = [
        {"pid": 3, "run": "T", "attempt": 1, "ev": ev, "t": t}
        for ev, t in (("begin", 15.015), ("end", 15.025))
    ]
    assert peak_executing(lines + third, "P") == 3
    # So is code left running by a process that was not killed by the poison.
    with pytest.raises(AssertionError, match="not by the poison"):
        peak_executing(lines[:1] + lines[2:], "P")


# -- 5. SIGTERM: finish short attempts, hand back long ones -----------------------------------


GRACE = 2.5


def test_sigterm_finishes_short_attempts_and_hands_back_long_ones(
    fleet: Fleet, tmp_path: Path, backend: str
) -> None:
    """On SIGTERM a worker stops claiming, lets attempts that end within the grace period
    finish, and hands the others back without spending an attempt. One long run is a sync
    task blocked in a thread, which cancellation cannot reach: the process still exits
    after the grace period instead of waiting for it."""
    a = fleet.start("--concurrency", "5", "--shutdown-grace", str(GRACE))
    ledger, gate = tmp_path / "ledger.jsonl", tmp_path / "gate"
    short = [
        fleet.client.trigger("crash-hold", {"ledger": str(ledger), "sleep": 1.0}).id
        for _ in range(2)
    ]
    held = {"ledger": str(ledger), "gate": str(gate)}
    long = [fleet.client.trigger("crash-hold", held).id for _ in range(2)]
    long.append(fleet.client.trigger("crash-sync-hold", held).id)
    wait_for(
        "five attempts in flight",
        lambda: all(begins(ledger, r, "work") for r in short + long),
        10,
        fleet,
    )
    os.kill(a.pid, signal.SIGTERM)
    term_at = time.monotonic()
    # Queued after the signal: slots free up when the short runs end, yet A must not claim.
    late = [fleet.client.trigger("crash-hold", {"ledger": str(ledger)}).id for _ in range(2)]
    assert a.wait(timeout=GRACE + 10) == 0, fleet.log(a)
    exit_after = time.monotonic() - term_at

    figure(f"{backend} exit after SIGTERM (grace {GRACE:g} s)", f"{exit_after:.2f} s")
    assert GRACE - 0.2 <= exit_after <= GRACE + 3.0
    for r in fleet.store.get_runs(ENV, short):
        assert r.status == RunStatus.COMPLETED and r.attempt == 1
        assert r.output == f"work@{a.pid}"
    for r in fleet.store.get_runs(ENV, long):
        assert r.status == RunStatus.QUEUED, r.status
        assert r.attempt == 1 and r.worker_id is None
        assert fleet.failures(r.id) == []  # handed back, not failed
    for r in fleet.store.get_runs(ENV, late):
        assert r.status == RunStatus.QUEUED and not begins(ledger, r.id, "work")

    gate.touch()
    b = fleet.start()
    runs = fleet.wait_final(long + late, 15)
    assert all(r.status == RunStatus.COMPLETED for r in runs), [r.error for r in runs]
    for r in runs:
        assert r.attempt == 1
        assert r.output == f"work@{b.pid}"
    for r in long:
        assert [(e["pid"], e["attempt"]) for e in begins(ledger, r, "work")] == [
            (a.pid, 1),
            (b.pid, 1),
        ]


def test_sigterm_while_the_app_imports_stops_the_worker_cleanly(
    fleet: Fleet, tmp_path: Path, backend: str
) -> None:
    """A deploy may stop a worker that is still starting: a SIGTERM while its app imports
    (before the loop's handler exists) is kept, and the worker stops as soon as it has
    started, exit 0, claiming nothing; not killed by the default action (-15)."""
    ledger, gate = tmp_path / "ledger.jsonl", tmp_path / "import-gate"
    queued = fleet.client.trigger(crash_hold, {"ledger": str(ledger)}).id
    proc = fleet.spawn(env={"CRASH_APP_IMPORT_GATE": str(gate)})
    wait_for("the app's import to begin", lambda: Path(f"{gate}.importing").exists(), 15,
             fleet)
    os.kill(proc.pid, signal.SIGTERM)
    gate.touch()
    assert proc.wait(timeout=20) == 0, fleet.log(proc)
    assert fleet.run(queued).status == RunStatus.QUEUED
    assert not begins(ledger, queued, "work")
    assert all(w["status"] != "alive" for w in fleet.store.list_workers(ENV)
               if w["pid"] == proc.pid)


# -- 6. a stale worker resumes after its lease lapsed: fenced out -----------------------------


STALE_LEASE = 2.0
_APPNAME = "outlast-crash-stale"


def _holds_db_lock(fleet: Fleet, backend: str, appname: str = _APPNAME) -> bool:
    """Whether the frozen worker sits inside a transaction (holding the SQLite write lock
    or PostgreSQL row locks): freezing it there would stall every other worker too."""
    if backend == "sqlite":
        conn = sqlite3.connect(fleet.db_url.removeprefix("sqlite:///"), timeout=0.2)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    with psycopg.connect(fleet.db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = %s AND state <> 'idle'",
            (appname,),
        ).fetchone()
    return bool(row and row[0])


def _freeze(
    fleet: Fleet, proc: subprocess.Popen[bytes], backend: str, appname: str = _APPNAME
) -> None:
    """SIGSTOP ``proc`` outside a transaction (its connections named ``appname`` by
    PGAPPNAME), retrying until it is."""
    for _ in range(50):
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.05)
        if not _holds_db_lock(fleet, backend, appname):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.03)
    raise AssertionError("could not freeze the worker outside a transaction")


def test_stale_worker_is_fenced_after_sigstop(fleet: Fleet, tmp_path: Path, backend: str) -> None:
    """C4, fencing. Worker A is frozen (SIGSTOP) mid-step for longer than its lease, with
    its life lock still held: the process is alive, so only the lease can tell it is cut
    off (the lock path is proven by the first test). B takes over after the lease and
    completes the run; when A resumes (SIGCONT) nothing it tries to commit is accepted.

    A is frozen only outside a transaction (checked, else retried): frozen inside one it
    would hold the SQLite write lock and stall B as well, or PostgreSQL row locks until the
    server ended its session (tests/faults/test_frozen_in_transaction.py)."""
    a = fleet.start(
        "--lease-seconds", str(STALE_LEASE), "--no-scheduler", env={"PGAPPNAME": _APPNAME}
    )
    ledger, gate = tmp_path / "ledger.jsonl", tmp_path / "gate"
    run_id = fleet.client.trigger("crash-steps", {"ledger": str(ledger), "gate": str(gate)}).id
    wait_for("step two to begin", lambda: begins(ledger, run_id, "two"), 10, fleet)
    a_id = fleet.run(run_id).worker_id
    assert a_id is not None and fleet.proc_of(a_id) is a
    b = fleet.start()

    _freeze(fleet, a, backend)
    frozen_at = time.monotonic()
    wait_for(
        "B to take the run over",
        lambda: any(e["pid"] == b.pid for e in begins(ledger, run_id, "two")),
        STALE_LEASE + 10,
        fleet,
    )
    takeover = time.monotonic() - frozen_at
    assert fleet.worker_row(a_id)["status"] == "dead"
    gate.touch()  # both A's (frozen) and B's step two may now finish
    [done] = fleet.wait_final([run_id], 10)
    assert done.status == RunStatus.COMPLETED, done.error

    os.kill(a.pid, signal.SIGCONT)
    wait_for(
        "A to notice it lost the run",
        lambda: f"run {run_id}: lease lost; nothing committed" in fleet.log(a),
        10,
        fleet,
    )
    fleet.worker_id(a)  # A lives on, re-registered under a new identity
    after = fleet.run(run_id)

    a_finished_body = any(
        e["pid"] == a.pid and e["step"] == "two" and e["ev"] == "end"
        for e in read_ledger(ledger)
    )
    # How A first learnt of the loss: a refused commit (its heartbeat later finds no run
    # left to abandon), or its heartbeat (which abandons the run; any commit already
    # queued is refused all the same).
    how = "heartbeat" if "abandoning 1 runs" in fleet.log(a) else "refused commit"
    figure(f"{backend} takeover of a frozen worker (lease {STALE_LEASE:g} s)",
           f"{takeover:.2f} s; A finished its step body after SIGCONT: {a_finished_body}; "
           f"A first noticed by: {how}")
    assert (after.status, after.output, after.finished_at, after.updated_at) == (
        done.status, done.output, done.finished_at, done.updated_at
    ), "the stale worker changed the run after it ended"
    assert done.output == {"one": f"one@{a.pid}", "two": f"two@{b.pid}", "three": f"three@{b.pid}"}
    journal = {j.key: (j.attempt, json.loads(j.output or "null"))
               for j in fleet.store.journal(run_id)}
    assert journal["two"] == (2, f"two@{b.pid}"), journal
    assert [f["code"] for f in fleet.failures(run_id)] == ["worker_lost"]
    assert [e["pid"] for e in begins(ledger, run_id, "three")] == [b.pid]
