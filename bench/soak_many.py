"""Many processes on one PostgreSQL: a correctness soak, not a speed claim (issue 18, C6).

``W`` ``outlast worker`` processes and ``S`` ``outlast server`` processes (the CLI, real
processes) share one PostgreSQL database. The driver triggers ``N`` runs in all (children
included) over HTTP, in batches split across the servers: three-step runs, runs that fail
their first attempt after a committed step, runs that sleep durably, runs that wait for a
token the driver completes over HTTP, and parents whose children run in two queues with
concurrency limits (bench/soak_tasks.py). While they run it SIGKILLs one worker at each
fraction of ``--kill-at`` of the runs completed, starting a replacement each time, and
samples how many runs of each limited queue are EXECUTING (from the runs table, about
every 20 ms). At the end:

- every run is COMPLETED, every acknowledged run is there, and the liveness invariant of
  the fault suite holds (tests/faults/invariant.check_liveness);
- no step body ran twice except across a kill: every (run, step) has a body execution in
  the ledger (bench/soak_tasks.py), the journal's committed result names the last of
  them, and every earlier one was in a process the driver killed;
- no sample saw a limited queue above its limit.

It prints runs/s, wall time, the runs each kill cost an attempt and the highest queue
concurrency seen, and writes bench/results/soak_many.json (rendered into RESULTS.md).

    nice .venv/bin/python bench/soak_many.py [--n 100000] [--workers 8] [--servers 2]
        [--database-url URL | --db-prefix NAME | --private-cluster] [--kill-at 0.3,0.6]

By default it creates ``<db-prefix>_<random>`` on the PostgreSQL of ``BENCH_PG_URL`` and
drops it afterwards. tests/faults/test_many_processes.py runs the same driver small.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import soak_tasks as tasks  # noqa: E402
from outlast.server.auth import create_key  # noqa: E402
from outlast.store import open_store  # noqa: E402
from tests.faults.invariant import check_liveness, waiting_on_nothing  # noqa: E402

ENV = "dev"
# Top-level triggers per 20, by task (parents add their children).
MIX = (["soak-steps"] * 10 + ["soak-flaky"] * 3 + ["soak-sleep"] * 3 + ["soak-token"] * 3
       + ["soak-parent"] * 1)
BATCH = 1000


@dataclass
class Kill:
    worker_pid: int
    at: float  # wall clock (time.time()) when it was gone
    completed_before: int
    replacement_pid: int = 0
    retried_runs: int = 0  # attempts lost to this kill (worker_lost), from run_events


@dataclass
class Report:
    n: int
    workers: int
    servers: int
    started: str
    runs: int = 0
    completed: int = 0
    incomplete: bool = False  # stopped at --timeout with --partial: completed runs checked
    by_status: dict[str, int] = field(default_factory=dict)
    trigger_seconds: float = 0.0
    wall_seconds: float = 0.0  # first trigger sent -> last run COMPLETED, driver's clock
    runs_per_second: float = 0.0  # runs / (first start -> last finish), database's clock
    kills: list[Kill] = field(default_factory=list)
    step_executions: int = 0
    repeats_across_kill: int = 0
    violations: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)
    max_executing: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    peak_connections: int = 0  # sessions on the soak's database, sampled once a second
    active_sessions: int = 0  # summed over those samples: sessions running a statement
    lock_waits: int = 0  # ... and of them, waiting for a lock
    tokens_completed: int = 0
    token_errors: int = 0  # completions the servers refused (the driver's, retried)
    # Of the runs left unfinished, whose fault: the platform's (WAITING with nothing left to
    # resume them, tests/faults/invariant.waiting_on_nothing) or the driver's (WAITING on
    # a token still pending, which the driver should have completed).
    parked_for_good: int = 0
    tokens_left_pending: int = 0
    load: dict[str, float] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)  # what the rest wait for

    def lines(self) -> list[str]:
        kills = "; ".join(
            f"pid {k.worker_pid} at {k.completed_before:,} completed: {k.retried_runs} runs "
            "lost an attempt" for k in self.kills)
        conc = ", ".join(f"{q} {self.max_executing.get(q, 0)}/{lim}"
                         for q, lim in self.limits.items())
        return [
            f"runs {self.runs:,} ({self.completed:,} COMPLETED) {self.by_status}",
            f"wall {self.wall_seconds:,.1f} s (trigger {self.trigger_seconds:,.1f} s), "
            f"{self.runs_per_second:,.0f} runs/s first start -> last finish",
            f"kills: {kills or 'none'}",
            f"step bodies executed {self.step_executions:,}, repeated across a kill "
            f"{self.repeats_across_kill}, violations {len(self.violations)}",
            f"max EXECUTING per limited queue (observed/limit, {self.samples:,} samples): "
            f"{conc}",
            f"tokens completed over HTTP {self.tokens_completed:,} ({self.token_errors} "
            f"refused and retried); unfinished runs parked for good (platform) "
            f"{self.parked_for_good}, waiting on a token the driver left pending "
            f"{self.tokens_left_pending}; peak sessions on the "
            f"database {self.peak_connections}; of the active sessions sampled, "
            f"{self.lock_waits / max(1, self.active_sessions):.0%} waited for a lock; "
            f"load average {self.load}",
        ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan(n: int) -> list[str]:
    """Top-level task ids whose runs, children included, number about ``n``."""
    per_cycle = sum(tasks.RUNS_PER[t] for t in MIX)
    cycles, rest = divmod(n, per_cycle)
    out = MIX * cycles
    for t in MIX:  # the remainder with tasks of one run (the last may be a parent)
        if rest <= 0:
            break
        out.append(t)
        rest -= tasks.RUNS_PER[t]
    return out


def judge_steps(runs: list[tuple[str, str]],
                ledger: dict[tuple[str, str], list[tuple[float, int, int]]],
                journal: dict[tuple[str, str], str], killed: set[int]) -> tuple[int, list[str]]:
    """C2 and C3 from outside: every step of every run has a body execution in the ledger
    and a committed result in the journal; the result is the last execution's (a body that
    ran after its result was committed is a double execution); and every earlier execution
    was in a process that was SIGKILLed. Returns (repeats across a kill, violations)."""
    repeats = 0
    violations: list[str] = []
    seen: set[tuple[str, str]] = set()
    for run_id, task_id in runs:
        for step_name in tasks.STEPS[task_id]:
            seen.add((run_id, step_name))
            execs = ledger.get((run_id, step_name), [])
            committed = journal.get((run_id, step_name))
            if committed is None or not execs:
                violations.append(f"{run_id} {step_name}: journal {committed!r}, "
                                  f"{len(execs)} executions")
                continue
            _, pid, attempt = execs[-1]
            if json.loads(committed) != f"{pid}:{attempt}":
                violations.append(f"{run_id} {step_name}: committed {committed}, but the "
                                  f"body ran again after it: {execs}")
            for _, earlier_pid, _ in execs[:-1]:
                if earlier_pid in killed:
                    repeats += 1
                else:
                    violations.append(f"{run_id} {step_name}: ran again though its process "
                                      f"{earlier_pid} lived: {execs}")
    strays = len(ledger.keys() - seen)
    if strays:
        violations.append(f"{strays} ledger entries of steps no run has")
    return repeats, violations


class Soak:
    """The processes, the driver threads and the checks of one soak."""

    def __init__(self, db_url: str, tmp: Path, *, n: int, workers: int = 8, servers: int = 2,
                 concurrency: int = 10, kill_at: tuple[float, ...] = (0.3, 0.6),
                 timeout: float = 3600.0, partial_ok: bool = False, log: Any = print
                 ) -> None:
        self.db_url, self.tmp, self.n = db_url, tmp, n
        self.n_workers, self.n_servers, self.concurrency = workers, servers, concurrency
        self.kill_at, self.timeout, self.log = kill_at, timeout, log
        self.partial_ok = partial_ok
        self.stall = 120.0  # seconds with no run changing status: the soak is stuck
        self.ledger = tmp / "ledger"
        self.ledger.mkdir(parents=True, exist_ok=True)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.servers: list[tuple[subprocess.Popen[bytes], str]] = []
        self.killed: set[int] = set()
        self.top = plan(n)
        self.expected = sum(tasks.RUNS_PER[t] for t in self.top)
        self.acknowledged: list[str] = []
        self.report = Report(n=self.expected, workers=workers, servers=servers,
                             started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        self.report.limits = dict(tasks.LIMITS)
        self._stop = threading.Event()
        self._errors: list[str] = []
        self.key = ""

    # -- processes ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "SOAK_LEDGER_DIR": str(self.ledger),
                "OUTLAST_INPLACE_SLEEP_SECONDS": "0", "OUTLAST_LOG_LEVEL": "WARNING"}

    def spawn_worker(self) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "outlast", "worker", "--app", "bench.soak_tasks",
                 "--database-url", self.db_url, "--env", ENV,
                 "--concurrency", str(self.concurrency)],
                cwd=ROOT, env=self._env(), stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def spawn_server(self) -> None:
        port = _free_port()
        log = self.tmp / f"server-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "outlast", "server", "--database-url", self.db_url,
                 "--env", ENV, "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=self._env(), stdout=out, stderr=subprocess.STDOUT)
        self.servers.append((proc, f"http://127.0.0.1:{port}"))

    def start(self) -> None:
        store = open_store(self.db_url)  # in-process: two CLI start-ups saved
        try:
            store.migrate()
            self.key = create_key(store, ENV).secret
        finally:
            store.close()
        for _ in range(self.n_servers):
            self.spawn_server()
        for _ in range(self.n_workers):
            self.spawn_worker()
        deadline = time.monotonic() + 120
        while True:
            self.supervise()
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the fleet did not come up{self.tails()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        for _, url in self.servers:
            try:
                if httpx.get(f"{url}/api/v1/ready", timeout=2).status_code != 200:
                    return False
            except httpx.TransportError:
                return False
        pids = {p.pid for p in self.workers}
        rows = self._sql("SELECT pid FROM workers WHERE status = 'alive'")
        tasks_known = self._sql("SELECT count(*) FROM tasks WHERE id LIKE 'soak-%%'")
        return pids <= {r[0] for r in rows} and tasks_known[0][0] >= len(tasks.STEPS)

    def supervise(self) -> None:
        for proc in [*self.workers, *(p for p, _ in self.servers)]:
            if proc.pid not in self.killed and proc.poll() is not None:
                raise AssertionError(f"process {proc.pid} exited ({proc.returncode})"
                                     f"{self.tails()}")

    def tails(self) -> str:
        out = []
        for path in sorted(self.tmp.glob("*.log")):
            text = path.read_text(errors="replace")[-1500:]
            out.append(f"\n--- {path.name}\n{text}")
        return "".join(out)

    def stop(self) -> None:
        self._stop.set()
        procs = [*self.workers, *(p for p, _ in self.servers)]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    # -- the driver -----------------------------------------------------------------------

    def _sql(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return list(conn.execute(sql.encode(), params).fetchall())

    def trigger(self) -> None:
        """Every top-level run, in batches of BATCH, batch k through server k % S."""
        batches = [self.top[i:i + BATCH] for i in range(0, len(self.top), BATCH)]
        ids: list[list[str]] = [[] for _ in batches]

        def send(server: int) -> None:
            url = self.servers[server][1]
            with httpx.Client(base_url=url, timeout=300,
                              headers={"Authorization": f"Bearer {self.key}"}) as http:
                for k in range(server, len(batches), len(self.servers)):
                    items = [{"task": t, "payload": {"i": k * BATCH + j}}
                             for j, t in enumerate(batches[k])]
                    resp = http.post("/api/v2/tasks/batch", json={"items": items})
                    if resp.status_code != 200:
                        self._errors.append(f"batch {k}: {resp.status_code} {resp.text[:300]}")
                        return
                    ids[k] = [r["id"] for r in resp.json()["runs"]]

        threads = [threading.Thread(target=send, args=(s,), daemon=True)
                   for s in range(len(self.servers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._errors:
            raise AssertionError(f"triggering failed: {self._errors}")
        self.acknowledged = [i for chunk in ids for i in chunk]

    def _sample_queues(self) -> None:
        """Runs EXECUTING per limited queue, one statement (one snapshot) a sample."""
        queues = list(tasks.LIMITS)
        sql = ("SELECT queue, count(*) FROM runs WHERE status = 'EXECUTING' "
               "AND queue = ANY(%s) GROUP BY queue")
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self._stop.is_set():
                for q, count in conn.execute(sql, (queues,)).fetchall():
                    best = self.report.max_executing
                    best[q] = max(best.get(q, 0), int(count))
                    if count > tasks.LIMITS[q]:
                        self._errors.append(f"{count} runs EXECUTING in {q} "
                                            f"(limit {tasks.LIMITS[q]})")
                self.report.samples += 1
                if self.report.samples % 50 == 0:
                    sessions, active, locks = conn.execute(
                        "SELECT count(*), count(*) FILTER (WHERE state = 'active'), "
                        "count(*) FILTER (WHERE wait_event_type = 'Lock') "
                        "FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()").fetchone() or (0, 0, 0)
                    self.report.peak_connections = max(self.report.peak_connections,
                                                       int(sessions))
                    self.report.active_sessions += int(active)
                    self.report.lock_waits += int(locks)
                self._stop.wait(0.02)

    def _complete_tokens(self) -> None:
        """Completes every pending soak token over HTTP, alternating servers. A completion
        refused (or a request that failed) is counted and retried on the next pass, since
        the token is still pending; ten failures in a row fail the soak as the driver's."""
        clients = [httpx.Client(base_url=url, timeout=60,
                                headers={"Authorization": f"Bearer {self.key}"})
                   for _, url in self.servers]
        sql = ("SELECT id FROM waitpoints WHERE kind = 'token' AND status = 'pending' "
               "ORDER BY id LIMIT 500")
        k = failed = 0
        try:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                while not self._stop.is_set():
                    for (token_id,) in conn.execute(sql).fetchall():
                        k += 1
                        try:
                            resp = clients[k % len(clients)].post(
                                f"/api/v1/waitpoints/tokens/{token_id}/complete",
                                json={"data": {"by": "soak"}})
                            status: object = resp.status_code
                        except httpx.HTTPError as exc:
                            status = repr(exc)
                        if status == 200:
                            self.report.tokens_completed += 1
                            failed = 0
                            continue
                        self.report.token_errors += 1
                        failed += 1
                        self.log(f"  driver: completing token {token_id} failed: {status}")
                        if failed >= 10:
                            self._errors.append(f"driver: completing tokens failed {failed} "
                                                f"times in a row, last {token_id}: {status}")
                    self._stop.wait(0.2)
        finally:
            for c in clients:
                c.close()

    def _guarded(self, fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # a driver thread's failure fails the soak
                self._errors.append(f"{fn.__name__}: {exc!r}")
        return run

    def kill_one(self, index: int, completed: int) -> None:
        proc = self.workers[index]
        self.killed.add(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        kill = Kill(worker_pid=proc.pid, at=time.time(), completed_before=completed)
        kill.replacement_pid = self.spawn_worker().pid
        self.report.kills.append(kill)
        self.report.load[f"kill {len(self.report.kills)}"] = os.getloadavg()[0]
        self.log(f"  SIGKILL worker {proc.pid} at {completed:,} completed; "
                 f"replacement {kill.replacement_pid}")

    def _trigger_timed(self) -> None:
        began = time.monotonic()
        self.trigger()
        self.report.trigger_seconds = time.monotonic() - began
        self.log(f"  triggered {len(self.acknowledged):,} top-level runs in "
                 f"{self.report.trigger_seconds:.1f} s ({self.expected:,} runs in all)")

    def _counts(self) -> dict[str, int]:
        """Runs by status; fails the soak on a run that ended other than COMPLETED."""
        if self._errors:
            raise AssertionError(f"the soak failed: {self._errors[:10]}")
        counts = dict(self._sql("SELECT status, count(*) FROM runs GROUP BY status"))
        bad = {s: n for s, n in counts.items()
               if s in ("FAILED", "CANCELED", "EXPIRED", "TIMED_OUT", "CRASHED")}
        if bad:
            raise AssertionError(f"runs ended other than COMPLETED: {bad}")
        return counts

    def drive(self) -> None:
        """Trigger (in a thread), kill on schedule, wait until every run is COMPLETED."""
        trigger = threading.Thread(target=self._guarded(self._trigger_timed), daemon=True)
        threads = [threading.Thread(target=self._guarded(f), daemon=True)
                   for f in (self._sample_queues, self._complete_tokens)]
        self.report.load["start"] = os.getloadavg()[0]
        began = time.monotonic()
        for t in [trigger, *threads]:
            t.start()
        # kill distinct original workers, spread over the fleet
        victims = [((i * self.n_workers) // max(1, len(self.kill_at)) + 1) % self.n_workers
                   for i in range(len(self.kill_at))]
        last_print = 0.0
        moved, last_counts = time.monotonic(), {}
        while True:
            self.supervise()
            counts = self._counts()
            done = counts.get("COMPLETED", 0)
            if counts != last_counts:
                moved, last_counts = time.monotonic(), counts
            elif (time.monotonic() - moved > self.stall and trigger.ident
                  and not trigger.is_alive()):
                self.report.violations.append(f"stalled for {self.stall:.0f} s at {counts}")
                self.report.incomplete = True
                self.log(f"  STALLED at {counts}: checking what completed")
                break
            k = len(self.report.kills)
            if k < len(self.kill_at) and done >= self.kill_at[k] * self.expected:
                self.kill_one(victims[k], done)
            if done >= self.expected:
                break
            if time.monotonic() > began + self.timeout:
                if not self.partial_ok:
                    raise AssertionError(f"timed out with {counts}{self.tails()}")
                self.report.incomplete = True
                self.log(f"  stopped at the timeout with {counts}: checking what completed")
                break
            if time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                self.log(f"  {time.monotonic() - began:6.0f} s: {counts}")
            time.sleep(0.25)
        self.report.wall_seconds = time.monotonic() - began
        self.report.load["end"] = os.getloadavg()[0]
        self._stop.set()
        for t in [trigger, *threads]:
            t.join(timeout=30)
        if self._errors:
            raise AssertionError(f"the soak failed: {self._errors[:10]}")

    # -- the checks -----------------------------------------------------------------------

    def check(self) -> Report:
        r = self.report
        try:
            check_liveness(self.db_url, env=ENV)
        except AssertionError as exc:  # reported with the rest, not instead of it
            r.violations.append(f"liveness: {exc}")
        self._blame_unfinished()
        r.by_status = dict(self._sql("SELECT status, count(*) FROM runs GROUP BY status"))
        r.runs = sum(r.by_status.values())
        r.completed = r.by_status.get("COMPLETED", 0)
        first, last = self._sql("SELECT min(started_at), max(finished_at) FROM runs")[0]
        r.runs_per_second = r.runs / max(1e-9, last - first)
        done = "" if r.incomplete else " AND status = 'COMPLETED'"
        present = self._sql(f"SELECT count(*) FROM runs WHERE id = ANY(%s){done}",
                            self.acknowledged)[0][0]
        if present != len(self.acknowledged):
            r.violations.append(f"{len(self.acknowledged) - present} acknowledged runs are "
                                "missing or not COMPLETED")
        if r.incomplete:
            self._describe_unfinished()
        if not r.incomplete and (r.runs != self.expected or r.completed != r.runs):
            r.violations.append(f"expected {self.expected} runs COMPLETED, found {r.by_status}")
        self._check_ledger()
        self._count_retries()
        for q, lim in r.limits.items():
            if r.max_executing.get(q, 0) > lim:
                r.violations.append(f"{q}: {r.max_executing[q]} EXECUTING, limit {lim}")
        return r

    def _blame_unfinished(self) -> None:
        """Split runs left WAITING by whose fault it is (see Report.parked_for_good)."""
        r = self.report
        parked = waiting_on_nothing(self.db_url)
        r.parked_for_good = len(parked)
        if parked:
            r.violations.append(f"platform: {len(parked)} runs WAITING that nothing will "
                                f"resume, e.g. {parked[:3]}")
        r.tokens_left_pending = self._sql(
            "SELECT count(DISTINCT r.id) FROM runs r JOIN run_waits rw ON rw.run_id = r.id "
            "JOIN waitpoints w ON w.id = rw.waitpoint_id WHERE r.status = 'WAITING' "
            "AND w.kind = 'token' AND w.status = 'pending' "
            "AND w.created_at < extract(epoch FROM now()) - 60")[0][0]  # it polls every 0.2 s
        if r.tokens_left_pending:
            r.violations.append(f"driver: {r.tokens_left_pending} runs WAITING on a token "
                                "the driver left pending over a minute")

    def _describe_unfinished(self) -> None:
        """What the runs that did not complete wait for (kept in the report)."""
        rows = self._sql(
            "SELECT r.task_id, r.status, r.attempt, w.kind, w.status, count(*) FROM runs r "
            "LEFT JOIN run_waits rw ON rw.run_id = r.id "
            "LEFT JOIN waitpoints w ON w.id = rw.waitpoint_id "
            "WHERE r.status <> 'COMPLETED' GROUP BY 1, 2, 3, 4, 5 ORDER BY 6 DESC")
        self.report.unfinished = [" ".join(map(str, row)) for row in rows[:30]]
        sample = self._sql(
            "SELECT r.id, r.task_id, r.status, r.wait_reason, r.updated_at, "
            "(SELECT string_agg(w.kind || ':' || w.status || ':' || w.id, ',') "
            " FROM run_waits rw JOIN waitpoints w ON w.id = rw.waitpoint_id "
            " WHERE rw.run_id = r.id) FROM runs r WHERE r.status <> 'COMPLETED' LIMIT 5")
        for row in sample:
            self.log(f"  unfinished: {row}")
        for line in self.report.unfinished:
            self.log(f"  unfinished (task status attempt wait-kind wait-status count): {line}")

    def read_ledger(self) -> dict[tuple[str, str], list[tuple[float, int, int]]]:
        """(run, step) -> its body executions (time, pid, attempt), in time order."""
        out: dict[tuple[str, str], list[tuple[float, int, int]]] = collections.defaultdict(list)
        for path in self.ledger.glob("*.ledger"):
            for line in path.read_text().splitlines():
                t, pid, run, step_name, attempt = line.split()
                out[(run, step_name)].append((float(t), int(pid), int(attempt)))
        for execs in out.values():
            execs.sort()
        return out

    def _check_ledger(self) -> None:
        r = self.report
        ledger = self.read_ledger()
        r.step_executions = sum(len(v) for v in ledger.values())
        journal = {(run, key): out for run, key, out in self._sql(
            "SELECT run_id, key, output FROM journal WHERE kind = 'step' AND status = 'done'")}
        runs = [(run_id, task_id) for run_id, task_id in self._sql(
            "SELECT id, task_id FROM runs WHERE status = 'COMPLETED'")]
        if r.incomplete:  # judge the completed runs only
            done = {run_id for run_id, _ in runs}
            ledger = {key: execs for key, execs in ledger.items() if key[0] in done}
        repeats, violations = judge_steps(runs, ledger, journal, self.killed)
        r.repeats_across_kill += repeats
        r.violations.extend(violations)

    def _count_retries(self) -> None:
        """Attempts lost to each kill: worker_lost failures after it, before the next."""
        lost = [ts for (ts,) in self._sql(
            "SELECT ts FROM run_events WHERE kind = 'attempt_failed' "
            "AND data LIKE '%%worker_lost%%' ORDER BY ts")]
        bounds = [k.at - 5.0 for k in self.report.kills] + [float("inf")]
        for i, kill in enumerate(self.report.kills):
            kill.retried_runs = sum(1 for ts in lost if bounds[i] <= ts < bounds[i + 1])
        unexplained = sum(1 for ts in lost if ts < bounds[0])
        if unexplained:
            self.report.violations.append(f"{unexplained} attempts lost before any kill")

    def run(self) -> Report:
        t0 = time.monotonic()
        try:
            self.start()
            t1 = time.monotonic()
            self.drive()
            t2 = time.monotonic()
            report = self.check()
            t3 = time.monotonic()
        finally:
            self.stop()
        self.log(f"  phases: start {t1 - t0:.1f} s, drive {t2 - t1:.1f} s, check "
                 f"{t3 - t2:.1f} s, stop {time.monotonic() - t3:.1f} s")
        for line in report.lines():
            self.log(f"  {line}")
        return report


# -- the command ------------------------------------------------------------------------------


def _database(args: argparse.Namespace) -> tuple[str, Any]:
    """The database URL and a callable that cleans up after it."""
    if args.database_url:
        return args.database_url, lambda: None
    if args.private_cluster:
        from tests.faults.harness import PrivatePostgres

        pg = PrivatePostgres()
        pg.start()
        try:
            return pg.new_database(), pg.stop
        except BaseException:
            pg.stop()
            raise
    admin = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"{args.db_prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())

    return f"{admin.rpartition('/')[0]}/{name}", drop


def _save(report: Report, args: argparse.Namespace, db_desc: str) -> Path:
    sys.path.insert(0, str(BENCH))
    import _common as c
    import _report

    import outlast

    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    versions = {"outlast": f"{outlast.__version__}, commit {commit} (work tree)",
                "Python": sys.version.split()[0]}
    kills = "; ".join(f"pid {k.worker_pid} SIGKILLed at {k.completed_before:,} runs "
                      f"completed, {k.retried_runs} runs lost an attempt to it"
                      for k in report.kills)
    settings = {
        "soak": f"{report.workers} workers (--concurrency {args.concurrency}), "
                f"{report.servers} servers, {report.runs:,} runs, {db_desc}",
        "kills": kills or "none",
        "load average (1 min)": ", ".join(f"{k} {v:.1f}" for k, v in report.load.items()),
        "peak sessions on the database": str(report.peak_connections),
        "active sessions waiting for a lock": f"{report.lock_waits:,} of "
                                              f"{report.active_sessions:,} sampled",
        "checks": f"{report.completed:,}/{report.runs:,} COMPLETED; liveness held; "
                  f"{report.step_executions:,} step bodies, "
                  f"{report.repeats_across_kill} repeated across a kill, "
                  f"{len(report.violations)} violations",
    }
    res = c.Results("outlast", " ".join(["nice", ".venv/bin/python", *sys.argv]),
                    report.started, versions, settings)
    note = "correctness soak on a shared 2-core machine, not a speed claim"
    res.record("postgres", "soak_runs_per_s", "runs/s", report.runs_per_second, note=note)
    res.record("postgres", "soak_wall_s", "s", report.wall_seconds, higher_is_better=False,
               note="first trigger -> last run COMPLETED")
    for q, lim in report.limits.items():
        res.record("postgres", f"soak_max_executing_{q.replace('-', '_')}", "runs",
                   report.max_executing.get(q, 0), higher_is_better=False,
                   note=f"limit {lim}; {report.samples:,} samples of the runs table")
    res.record("postgres", "soak_repeats_across_kill", "step bodies",
               report.repeats_across_kill, higher_is_better=False,
               note="allowed: the earlier execution's process was SIGKILLed")
    res.record("postgres", "soak_violations", "count", len(report.violations),
               higher_is_better=False, note="must be 0")
    if report.incomplete:
        res.fail("postgres", "soak", f"stopped at --timeout {args.timeout:.0f} s with "
                 f"{report.completed:,} of {report.n:,} runs COMPLETED; the checks cover those")
    path = res.save(c.RESULTS_DIR / "soak_many.json")
    if not args.no_report:
        _report.write()
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="runs in all, children included")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=10, help="each worker's --concurrency")
    p.add_argument("--kill-at", default="0.3,0.6",
                   help="fractions of runs completed at which a worker is SIGKILLed")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds from the first "
                   "trigger until the soak fails (or stops, with --partial)")
    p.add_argument("--partial", action="store_true", help="at the timeout, stop and check "
                   "the runs completed so far; recorded as incomplete")
    db = p.add_mutually_exclusive_group()
    db.add_argument("--database-url", help="an existing, empty database")
    db.add_argument("--private-cluster", action="store_true",
                    help="initdb a PostgreSQL cluster of its own (fsync off) for the soak")
    p.add_argument("--db-prefix", default="outlast_soak",
                   help="CREATE DATABASE <prefix>_<random> on BENCH_PG_URL's server")
    p.add_argument("--no-report", action="store_true", help="do not re-render RESULTS.md")
    p.add_argument("--no-save", action="store_true", help="write no results file")
    p.add_argument("--keep", action="store_true",
                   help="keep the database (and a private cluster) afterwards, to look")
    return p.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)  # unwinds: the fleet is stopped and the database dropped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    url, cleanup = _database(args)
    desc = ("a private cluster (fsync off)" if args.private_cluster
            else "its own database on the shared PostgreSQL")
    try:
        with tempfile.TemporaryDirectory(prefix="outlast-soak-") as tmp:
            soak = Soak(url, Path(tmp), n=args.n, workers=args.workers, servers=args.servers,
                        concurrency=args.concurrency, timeout=args.timeout,
                        partial_ok=args.partial, log=functools.partial(print, flush=True),
                        kill_at=tuple(float(x) for x in args.kill_at.split(",") if x))
            print(f"soak: {soak.expected:,} runs, {args.workers} workers, {args.servers} "
                  f"servers, {desc}", flush=True)
            report = soak.run()
    finally:
        if args.keep:
            print(f"  kept {url}", flush=True)
        else:
            cleanup()
    if not args.no_save:
        print(f"  wrote {_save(report, args, desc)}")
    print(json.dumps(asdict(report)["violations"][:20], indent=1))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
