"""outlast's benchmarks on SQLite and PostgreSQL. Prints figures; never a timed test.

    .venv/bin/python bench/outlast_bench.py [--n N] [--reps R] [--backend sqlite|postgres|both]
                                            [--only NAME[,NAME]] [--n-fanout]

Every repetition gets a fresh database (a temp SQLite file, or CREATE DATABASE … dropped
afterwards). Workers are real ``outlast worker`` processes; throughput and latency come
from the runs' own timestamps in the database (created_at, started_at, finished_at), so
process start-up and the harness's polling are not counted. Results go to
bench/results/outlast.json, and bench/RESULTS.md is rebuilt from every results file there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

# Which outlast is measured (--src): its directory goes first on sys.path, here and in
# every worker process, before anything imports outlast.
SRC, SRC_DESC = c.outlast_source(c.source_from_argv(sys.argv[1:]))
sys.path.insert(0, str(SRC))

import _report  # noqa: E402
import outlast_tasks as t  # noqa: E402

import outlast  # noqa: E402
from outlast.client import Client  # noqa: E402
from outlast.store import open_store  # noqa: E402

ENV = "bench"
APP = str(c.BENCH / "outlast_tasks.py")
LOGS = Path(tempfile.gettempdir()) / "outlast-bench-logs"
CHUNK = 1000  # batch_trigger size for bulk enqueue and for pre-enqueueing


# -- databases ----------------------------------------------------------------------------------


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh, migrated database for one repetition."""
    with c.fresh_database(backend, "outlast_bench") as url:
        _migrate(url)
        yield url


def _migrate(url: str) -> None:
    store = open_store(url)
    store.migrate()
    store.close()


class Db:
    """The harness's own read-only connection, for counting and reading timestamps."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite:")
        self.conn: Any
        if self.sqlite:
            self.conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30.0)
        else:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.sqlite:
            sql = sql.replace("%s", "?")
        return list(self.conn.execute(sql, params).fetchall())

    def one(self, sql: str, *params: Any) -> tuple[Any, ...]:
        return self.rows(sql, *params)[0]

    def count(self, task_id: str, status: str) -> int:
        return int(self.one(
            "SELECT COUNT(*) FROM runs WHERE env = %s AND task_id = %s AND status = %s",
            ENV, task_id, status,
        )[0])

    def span(self, task_id: str) -> float:
        """Seconds from the first start to the last completion of a task's runs."""
        first, last = self.one(
            "SELECT MIN(started_at), MAX(finished_at) FROM runs WHERE env = %s AND task_id = %s",
            ENV, task_id,
        )
        return float(last) - float(first)

    def alive_workers(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.rows(
            "SELECT id, pid FROM workers WHERE status = 'alive'")}

    def close(self) -> None:
        self.conn.close()


# -- workers --------------------------------------------------------------------------------------


def spawn_worker(url: str, concurrency: int, env: dict[str, str] | None = None,
                 tag: str = "worker") -> subprocess.Popen[bytes]:
    """``outlast worker`` in its own process, logging to a file under LOGS."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{tag}-{int(time.time() * 1000)}.log", "wb")  # noqa: SIM115
    argv = [sys.executable, "-m", "outlast", "worker", "--app", APP, "--database-url", url,
            "--env", ENV, "--concurrency", str(concurrency)]
    return subprocess.Popen(
        argv, cwd=SRC, stdout=log, stderr=subprocess.STDOUT,  # -m looks in cwd first
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
    )


@contextlib.contextmanager
def worker(url: str, concurrency: int, env: dict[str, str] | None = None
           ) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn_worker(url, concurrency, env)
    try:
        yield proc
    finally:
        c.stop_process(proc)


def wait_registered(db: Db, pid: int, timeout: float = 30.0) -> str:
    """The worker id of the process ``pid`` once it is registered and alive."""
    found: dict[str, str] = {}

    def check() -> bool:
        for wid, p in db.alive_workers().items():
            if p == pid:
                found["id"] = wid
        return bool(found)

    c.wait_until(check, timeout, 0.05, f"worker pid {pid} registered")
    return found["id"]


def wait_done(db: Db, proc: subprocess.Popen[bytes], task_id: str, n: int,
              timeout: float) -> None:
    def check() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}; logs in {LOGS}")
        return db.count(task_id, "COMPLETED") >= n

    c.wait_until(check, timeout, 0.2, f"{n} {task_id} runs completed")


def enqueue(client: Client, task: Any, payloads: list[Any]) -> None:
    for i in range(0, len(payloads), CHUNK):
        client.batch_trigger(task, payloads[i : i + CHUNK])


# -- workloads ------------------------------------------------------------------------------------


def bench_enqueue(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    """(a) Client.trigger one by one, and Client.batch_trigger in chunks of CHUNK."""
    n_single = min(args.n, args.n_single)
    for _ in range(args.reps):
        with database(backend) as url:
            client = Client(url, env=ENV)
            client.trigger(t.noop, -1)  # schema check and connection warm-up
            t0 = time.perf_counter()
            for i in range(n_single):
                client.trigger(t.noop, i)
            res.record(backend, "enqueue_single", "runs/s", n_single / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            enqueue(client, t.noop, list(range(args.n)))
            res.record(backend, "enqueue_bulk", "runs/s", args.n / (time.perf_counter() - t0),
                       note=f"batch_trigger, {CHUNK} per call")
            client.close()


def _drain(backend: str, url: str, task: Any, n: int, concurrency: int,
           payload: Callable[[int], Any] = lambda i: i) -> tuple[float, float]:
    """Pre-enqueue n runs, drain them with one worker; (seconds, peak RSS MiB)."""
    client = Client(url, env=ENV)
    enqueue(client, task, [payload(i) for i in range(n)])
    client.close()
    db = Db(url)
    try:
        with worker(url, concurrency) as proc:
            wait_done(db, proc, task.id, n, timeout=60 + n / 20)
            rss = c.tree_peak_rss_mb(proc.pid)
        return db.span(task.id), rss
    finally:
        db.close()


def bench_drain(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    """(b) + (e) drain N no-op runs with one worker; throughput and the worker's peak RSS."""
    for conc in args.concurrency:
        label = "default (=10)" if conc == 10 else str(conc)
        for _ in range(args.reps):
            with database(backend) as url:
                span, rss = _drain(backend, url, t.noop, args.n, conc)
            res.record(backend, f"drain_c{conc}", "runs/s", args.n / span,
                       note=f"N={args.n}, concurrency {label}")
            res.record(backend, f"rss_c{conc}", "MiB", rss, higher_is_better=False,
                       note=f"VmHWM of the worker draining N={args.n}")


def bench_latency(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    """(c) trigger→start and trigger→done at idle: one run at a time, one worker.

    trigger→start is measured as Celery's is (peers/celery_bench.py): the wall clock
    just before the trigger call, to the wall clock at the first line of the task's body
    (``bench-stamp`` returns it as its output). trigger→done is the run's own stamps,
    created_at to finished_at (its end committed)."""
    rng = random.Random(7)
    for _ in range(args.reps):
        with database(backend) as url:
            db = Db(url)
            client = Client(url, env=ENV)
            with worker(url, 10) as proc:
                wait_registered(db, proc.pid)
                sent: list[tuple[float, str]] = []
                returned: list[float] = []
                for i in range(args.samples + 5):
                    t_sent = time.time()
                    h = client.trigger(t.stamp, i)
                    t_back = time.time()
                    c.wait_until(lambda h=h, db=db: db.one(
                        "SELECT status FROM runs WHERE id = %s", h.id)[0] == "COMPLETED",
                        10.0, 0.002, f"run {h.id} completed")
                    if i >= 5:  # the first few warm the worker up
                        sent.append((t_sent, h.id))
                        returned.append(t_back)
                    # a random gap, so triggers fall at random phases of the worker's poll
                    time.sleep(rng.uniform(0.0, 0.03))
            rows = [db.one("SELECT created_at, started_at, finished_at FROM runs WHERE id = %s",
                           i) for _, i in sent]
            bodies = [float(client.retrieve(i).output) for _, i in sent]
            client.close()
            db.close()
        start = [(b - s) * 1000 for (s, _), b in zip(sent, bodies, strict=True)]
        done = [(f - cr) * 1000 for cr, _, f in rows]
        # where the time goes, by the runs' own stamps (the database's clock, which the
        # processes read as the wall clock plus a measured offset: a rough split)
        t_sent = [s for s, _ in sent]
        created = [cr for cr, _, _ in rows]
        started = [st for _, st, _ in rows]
        split = {
            "call→created_at": [(b - a) * 1000 for a, b in zip(t_sent, created, strict=True)],
            "call→returned": [(b - a) * 1000 for a, b in zip(t_sent, returned, strict=True)],
            "created→started": [(b - a) * 1000 for a, b in zip(created, started, strict=True)],
            "started_at→body": [(b - a) * 1000 for a, b in zip(started, bodies, strict=True)],
        }
        print("  p50s: " + ", ".join(f"{k} {c.percentile(v, 50):.3f} ms"
                                     for k, v in split.items()), flush=True)
        how = ("a datagram to waiting workers after commit (poll 50 ms as backup)"
               if backend == "sqlite" else "LISTEN/NOTIFY")
        notes = {"start": "trigger() call to the task body's first line (wall clock)",
                 "done": "created_at to finished_at"}
        for name, vals in (("start", start), ("done", done)):
            for p in (50, 95, 99):
                res.record(backend, f"latency_{name}_p{p}", "ms", c.percentile(vals, p),
                           higher_is_better=False,
                           note=f"{args.samples} samples, {notes[name]}; cross-process "
                                f"wake-up by {how}")


def bench_steps(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    """(d) durable runs of three step.run calls each."""
    n = args.n_steps
    for conc in args.concurrency:
        for _ in range(args.reps):
            with database(backend) as url:
                span, _ = _drain(backend, url, t.three_steps, n, conc)
            res.record(backend, f"steps_runs_c{conc}", "runs/s", n / span,
                       note=f"{n} runs x 3 step.run, concurrency {conc}")
            res.record(backend, f"steps_steps_c{conc}", "steps/s", 3 * n / span,
                       note=f"{n} runs x 3 step.run, concurrency {conc}")


def bench_fanout(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    """(f) a parent's batch_trigger_and_wait of M children on a queue limited to 10."""
    m = args.m
    ideal = t.FANOUT_LIMIT / t.CHILD_SECONDS
    for _ in range(args.reps):
        with database(backend) as url:
            db = Db(url)
            client = Client(url, env=ENV)
            with worker(url, args.fanout_worker_concurrency) as proc:
                h = client.trigger(t.fanout_parent, m)
                wait_done(db, proc, t.fanout_parent.id, 1, timeout=60 + 10 * m / ideal)
            done = db.count(t.fanout_child.id, "COMPLETED")
            span = db.span(t.fanout_child.id)
            created, finished = db.one(
                "SELECT created_at, finished_at FROM runs WHERE id = %s", h.id)
            client.close()
            db.close()
        if done != m:
            res.fail(backend, "fanout_rate", f"{done} of {m} children completed")
            continue
        rate = m / span
        note = (f"M={m}, queue limit {t.FANOUT_LIMIT}, child sleeps {t.CHILD_SECONDS * 1000:.0f}"
                f" ms, worker concurrency {args.fanout_worker_concurrency}")
        res.record(backend, "fanout_rate", "children/s", rate, note=note)
        res.record(backend, "fanout_pct", "% of ideal", 100 * rate / ideal,
                   note=f"ideal {ideal:.0f} children/s")
        res.record(backend, "fanout_parent_s", "s", finished - created, higher_is_better=False,
                   note="parent trigger to parent done")


def bench_timers(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    """(g) N runs parked on sleep waitpoints that all fall due at one moment."""
    n = args.n_timers
    for _ in range(args.reps):
        with database(backend) as url:
            db = Db(url)
            client = Client(url, env=ENV)
            # parking runs at a few hundred/s on PostgreSQL here, faster on SQLite
            due = time.time() + args.timer_margin + n / (400 if backend == "sqlite" else 120)
            enqueue(client, t.timer, [due] * n)
            env = {"OUTLAST_INPLACE_SLEEP_SECONDS": "0"}
            with worker(url, 10, env) as proc:
                try:
                    c.wait_until(lambda db=db: db.count(t.timer.id, "WAITING") >= n,
                                 max(1.0, due - time.time() - 0.2), 0.2, "all parked")
                except TimeoutError:
                    res.fail(backend, "timers_all_s",
                             f"parking {n} runs took longer than the margin; raise --timer-margin")
                    continue
                first, parked = db.one(
                    "SELECT MIN(started_at), MAX(updated_at) FROM runs WHERE task_id = %s",
                    t.timer.id)
                wait_done(db, proc, t.timer.id, n, timeout=due - time.time() + 60 + n / 20)
            finished = sorted(float(r[0]) for r in db.rows(
                "SELECT finished_at FROM runs WHERE task_id = %s", t.timer.id))
            client.close()
            db.close()
        res.record(backend, "timers_park_rate", "runs/s", n / (parked - first),
                   note=f"N={n} runs reaching wait.until and parking")
        res.record(backend, "timers_all_s", "s", finished[-1] - due, higher_is_better=False,
                   note=f"N={n} timers due at once: due moment to last run completed")
        res.record(backend, "timers_p50_s", "s", c.percentile(finished, 50) - due,
                   higher_is_better=False, note="due moment to the median run completed")


def bench_recovery(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    """(h) SIGKILL the worker executing a run; time until another worker re-claims it."""
    with database(backend) as url:
        db = Db(url)
        client = Client(url, env=ENV)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for _ in range(2):
                p = spawn_worker(url, 10, tag="recovery")
                procs[wait_registered(db, p.pid)] = p
            delays = []
            for _ in range(args.kills):
                h = client.trigger(t.crash, 60.0)
                holder: dict[str, str] = {}

                def executing(h: Any = h, holder: dict[str, str] = holder) -> bool:
                    status, wid = db.one("SELECT status, worker_id FROM runs WHERE id = %s", h.id)
                    if status == "EXECUTING" and wid:
                        holder["id"] = wid
                    return bool(holder)

                c.wait_until(executing, 30.0, 0.01, "run executing")
                time.sleep(0.2)  # let the attempt settle into its sleep
                victim = procs.pop(holder["id"])
                killed_at = time.time()
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                c.wait_until(lambda h=h: db.one(
                    "SELECT lease_epoch FROM runs WHERE id = %s", h.id)[0] >= 2,
                    90.0, 0.01, "run re-claimed")
                reclaimed = db.one("SELECT segment_started_at FROM runs WHERE id = %s", h.id)[0]
                delays.append(float(reclaimed) - killed_at)
                res.record(backend, "recovery_s", "s", float(reclaimed) - killed_at,
                           higher_is_better=False,
                           note="SIGKILL to re-claim by the surviving worker (lock-based death "
                                "detection, reaper tick 0.25 s)")
                p = spawn_worker(url, 10, tag="recovery")
                procs[wait_registered(db, p.pid)] = p
        finally:
            for p in procs.values():
                c.stop_process(p)
            client.close()
            db.close()


WORKLOADS: dict[str, Callable[[str, argparse.Namespace, c.Results], None]] = {
    "enqueue": bench_enqueue,
    "drain": bench_drain,
    "latency": bench_latency,
    "steps": bench_steps,
    "fanout": bench_fanout,
    "timers": bench_timers,
    "recovery": bench_recovery,
}


# -- versions and settings ------------------------------------------------------------------------


def _loop_desc() -> str:
    """The event loop the workers ran on (``--loop``, default auto), with its version."""
    choice = os.environ.get("OUTLAST_LOOP") or "auto"
    try:
        from outlast._loop import loop_name
    except ImportError:  # an outlast from before --loop: the standard loop
        return "asyncio"
    name = loop_name(choice)
    if name == "uvloop":
        from importlib.metadata import version

        return f"uvloop {version('uvloop')}"
    return name


def versions_and_settings(backends: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    versions = {
        "outlast": f"{outlast.__version__}, {SRC_DESC}",
        "Python": sys.version.split()[0],
        "SQLite": sqlite3.sqlite_version,
        "worker loop": _loop_desc(),
    }
    settings: dict[str, str] = {}
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            store: Any = open_store(f"sqlite:///{tmp}/probe.db")
            sync = store._conn.execute("PRAGMA synchronous").fetchone()
            mode = store._conn.execute("PRAGMA journal_mode").fetchone()
            store.close()
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        settings["SQLite"] = (f"journal_mode={next(iter(mode.values()))}, "
                              f"synchronous={names.get(next(iter(sync.values())), '?')}")
    if "postgres" in backends:
        pg = c.pg_settings()
        versions["PostgreSQL"] = pg.pop("version")
        settings["PostgreSQL"] = ", ".join(f"{k}={v}" for k, v in pg.items())
    return versions, settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="runs drained / bulk-enqueued")
    p.add_argument("--n-single", type=int, default=2_000,
                   help="runs triggered one by one (capped at --n)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per figure (>= 3)")
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--only", default="", help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--concurrency", default="10,100",
                   help="worker concurrencies for drain and steps (10 is the default)")
    p.add_argument("--samples", type=int, default=200, help="latency samples")
    p.add_argument("--n-steps", type=int, default=2_000, help="3-step runs")
    p.add_argument("--m", type=int, default=5_000, help="fan-out children")
    p.add_argument("--n-fanout", action="store_true", help="fan out 50,000 children")
    p.add_argument("--fanout-worker-concurrency", type=int, default=20,
                   help="above the queue limit, so the queue's limit is what binds")
    p.add_argument("--n-timers", type=int, default=10_000, help="timers due at once")
    p.add_argument("--timer-margin", type=float, default=5.0,
                   help="seconds (+ N/400 on SQLite, N/120 on PostgreSQL) between enqueueing "
                        "timers and their due moment")
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs for the recovery figure")
    p.add_argument("--no-report", action="store_true", help="do not rebuild RESULTS.md")
    p.add_argument("--out", default="",
                   help="write the figures to this JSON file (implies --no-report) instead "
                        "of bench/results/outlast.json")
    p.add_argument("--src", default="worktree",
                   help="outlast to measure: worktree (as checked out) or a git revision, "
                        "exported read-only with git archive (e.g. HEAD)")
    args = p.parse_args(argv)
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x]
    if args.n_fanout:
        args.m = 50_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; choose from {list(WORKLOADS)}")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/outlast_bench.py",
                                                 *(sys.argv[1:] if argv is None else argv)])
    versions, settings = versions_and_settings(backends)
    res = c.Results("outlast", command, c.now_iso(), versions, settings)
    path = Path(args.out) if args.out else c.RESULTS_DIR / "outlast.json"
    if only and path.exists():
        # --only refreshes some figures and keeps the others of the previous run
        old = c.Results.load(path)
        res.metrics = [m for m in old.metrics if _workload_of(m.workload) not in only
                       or m.backend not in backends]
        res.failures = [f for f in old.failures if _workload_of(f.workload) not in only
                        or f.backend not in backends]
        res.command = f"{old.command}; then {command}"
    print(f"outlast {versions}; {settings}", flush=True)
    for backend in backends:
        for name, fn in WORKLOADS.items():
            if only and name not in only:
                continue
            print(f"[{backend}] {name}", flush=True)
            t0 = time.monotonic()
            try:
                fn(backend, args, res)
            except Exception as exc:
                res.fail(backend, name, f"{type(exc).__name__}: {exc}")
            print(f"[{backend}] {name} took {time.monotonic() - t0:.0f} s", flush=True)
            res.save(path)
    res.save(path)
    if not args.no_report and not args.out:
        print(f"wrote {_report.write()}")
    return 0


def _workload_of(metric: str) -> str:
    prefixes = {"enqueue": "enqueue", "drain": "drain", "rss": "drain", "latency": "latency",
                "steps": "steps", "fanout": "fanout", "timers": "timers", "recovery": "recovery"}
    return prefixes.get(metric.split("_")[0], metric)


if __name__ == "__main__":
    raise SystemExit(main())
