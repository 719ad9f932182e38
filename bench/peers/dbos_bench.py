"""DBOS Transact on PostgreSQL and on SQLite: queued no-op and three-step workflows.

Run with the peers' venv: bench/.peers-venv/bin/python bench/peers/dbos_bench.py.
Workflows are enqueued with ``DBOSClient.enqueue`` (DBOS has no bulk enqueue) onto a
``Queue`` and run by one worker process (``DBOS.launch``), with DBOS's defaults (queue
polled every 1 s, no concurrency limit) and with ``worker_concurrency=10``. Timings come
from ``dbos.workflow_status`` (created_at, started_at_epoch_ms, updated_at, all ms).
DBOS recovers a dead executor's workflows only when a process with the same executor id
restarts, or through Conductor / the admin API: no recovery figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common as c  # noqa: E402

LOGS = Path("/tmp/outlast-bench-logs")


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="dbos-bench-") as tmp:
            url = f"sqlite:///{tmp}/dbos.sqlite"
            migrate(url)
            yield url
        return
    with c.fresh_pg_database("bench_dbos") as url:
        migrate(url)
        yield url


def env(url: str, conc: int | None = None) -> dict[str, str]:
    return {**os.environ, "BENCH_DSN": url, "BENCH_CONC": str(conc or ""),
            "PYTHONPATH": str(HERE)}


def migrate(url: str) -> None:
    subprocess.run([sys.executable, str(HERE / "dbos_app.py"), "migrate"], env=env(url),
                   cwd=HERE, check=True, stdout=subprocess.DEVNULL, timeout=120)


def spawn(url: str, conc: int | None) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"dbos-{int(time.time() * 1000)}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, str(HERE / "dbos_app.py")], env=env(url, conc),
                            cwd=HERE, stdout=log, stderr=subprocess.STDOUT)


class Db:
    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            import sqlite3

            self.conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
            self.table = "workflow_status"
        else:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)
            self.table = "dbos.workflow_status"

    def one(self, sql: str, *params: Any) -> tuple[Any, ...]:
        sql = sql.replace("{t}", self.table)
        if self.sqlite:
            sql = sql.replace("%s", "?")
        return tuple(self.conn.execute(sql, params).fetchone())

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql.replace("{t}", self.table)).fetchall())

    def done(self, name: str) -> int:
        return int(self.one("SELECT count(*) FROM {t} WHERE status = 'SUCCESS' AND name = %s",
                            name)[0])

    def close(self) -> None:
        self.conn.close()


def client(url: str) -> Any:
    from dbos import DBOSClient

    return DBOSClient(system_database_url=url)


def enqueue(cl: Any, name: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        cl.enqueue({"queue_name": "bench", "workflow_name": name})
    return time.perf_counter() - t0


def bench_enqueue(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    n_single = min(args.n, args.n_single)
    for _ in range(args.reps):
        with database(backend) as url:
            cl = client(url)
            enqueue(cl, "noop_wf", 1)
            dt = enqueue(cl, "noop_wf", n_single)
            cl.destroy()
        res.record(backend, "enqueue_single", "runs/s", n_single / dt,
                   note="DBOSClient.enqueue, one workflow per call (no bulk API)")


def _drain(backend: str, url: str, name: str, n: int, conc: int | None) -> tuple[float, float]:
    """Seconds from the first start to the last completion, and the worker's peak RSS.

    On PostgreSQL from workflow_status (ms). DBOS stamps SQLite rows in whole seconds
    before SQLite 3.42 (unixepoch('subsec')), so there the harness times it: from the
    first completed workflow it sees to the last, polling every 10 ms."""
    cl = client(url)
    enqueue(cl, name, n)
    cl.destroy()
    db = Db(url)
    proc = spawn(url, conc)
    seen: dict[str, float] = {}
    try:
        def check() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"DBOS worker exited with {proc.returncode}; logs in {LOGS}")
            k = db.done(name)
            if k and "first" not in seen:
                seen["first"], seen["k"] = time.time(), k
            return k >= n

        c.wait_until(check, 120 + n / 10, 0.01, f"{n} {name} done")
        seen["last"] = time.time()
        rss = c.tree_peak_rss_mb(proc.pid)
    finally:
        c.stop_process(proc)
    first, last = db.one("SELECT min(started_at_epoch_ms), max(updated_at) FROM {t} "
                         "WHERE name = %s", name)
    db.close()
    if db.sqlite:  # n - k workflows completed between the two observations
        return (seen["last"] - seen["first"]) * n / max(1, n - seen["k"]), rss
    return (float(last) - float(first)) / 1000, rss


def bench_drain(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    for conc, workload in ((None, "cdefault"), (10, "c10")):
        note = ("defaults: queue polled every 1 s, no concurrency limit" if conc is None
                else "Queue(worker_concurrency=10)")
        for _ in range(args.reps):
            with database(backend) as url:
                span, rss = _drain(backend, url, "noop_wf", args.n, conc)
            res.record(backend, f"drain_{workload}", "runs/s", args.n / span,
                       note=f"N={args.n} no-op workflows, {note}")
            res.record(backend, f"rss_{workload}", "MiB", rss, higher_is_better=False,
                       note=f"VmHWM of the DBOS worker draining N={args.n}")


def bench_steps(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    n = args.n_steps
    for conc, workload in ((None, "cdefault"), (10, "c10")):
        note = "default queue" if conc is None else "worker_concurrency=10"
        for _ in range(args.reps):
            with database(backend) as url:
                span, _ = _drain(backend, url, "three_wf", n, conc)
            res.record(backend, f"steps_runs_{workload}", "runs/s", n / span,
                       note=f"{n} workflows x 3 @DBOS.step, {note}")
            res.record(backend, f"steps_steps_{workload}", "steps/s", 3 * n / span,
                       note=f"{n} workflows x 3 @DBOS.step, {note}")


def bench_latency(backend: str, args: argparse.Namespace, res: c.Results) -> None:
    rng = random.Random(7)
    samples = args.samples
    for _ in range(args.reps):
        with database(backend) as url:
            db = Db(url)
            cl = client(url)
            proc = spawn(url, None)
            observed: list[float] = []
            try:
                time.sleep(4)
                for i in range(samples + 5):
                    t0 = time.time()
                    handle = cl.enqueue({"queue_name": "bench", "workflow_name": "noop_wf"})
                    wid = handle.get_workflow_id()
                    c.wait_until(lambda wid=wid, db=db: db.one(
                        "SELECT status FROM {t} WHERE workflow_uuid = %s", wid)[0] == "SUCCESS",
                        15, 0.005, "workflow done")
                    if i >= 5:
                        observed.append((time.time() - t0) * 1000)
                    time.sleep(rng.uniform(0.0, 0.03))
            finally:
                c.stop_process(proc)
                cl.destroy()
            rows = db.rows("SELECT created_at, started_at_epoch_ms, updated_at FROM {t} "
                           "ORDER BY created_at")[5:]
            db.close()
        start = [float(s) - float(cr) for cr, s, _ in rows]
        done = [float(u) - float(cr) for cr, _, u in rows]
        note = f"{len(start)} samples; queue polled every 1 s (DBOS default)"
        series = [("start", start), ("done", done)]
        if backend == "sqlite":  # whole-second timestamps: time it from the client instead
            note += "; SQLite: enqueue call to SUCCESS seen by the client (5 ms polling)"
            series = [("done", observed)]
        for name, vals in series:
            for p in (50, 99):
                res.record(backend, f"latency_{name}_p{p}", "ms", c.percentile(vals, p),
                           higher_is_better=False, note=note)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-single", type=int, default=2_000)
    p.add_argument("--n-steps", type=int, default=2_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--only", default="")
    args = p.parse_args()
    from importlib.metadata import version

    res = c.Results("dbos", " ".join(["bench/.peers-venv/bin/python", *sys.argv]),
                    c.now_iso(), {"dbos": version("dbos"), "SQLAlchemy": version("sqlalchemy"),
                                  "Python": sys.version.split()[0]})
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    workloads = {"enqueue": bench_enqueue, "drain": bench_drain, "steps": bench_steps,
                 "latency": bench_latency}
    only = [w for w in args.only.split(",") if w]
    for backend in backends:
        res.fail(backend, "recovery_s", "not measured: DBOS recovers a dead executor's "
                 "workflows only when a process with its executor id restarts, or via "
                 "Conductor / the admin API")
        for name, fn in workloads.items():
            if only and name not in only:
                continue
            print(f"[dbos/{backend}] {name}", flush=True)
            try:
                fn(backend, args, res)
            except Exception as exc:
                res.fail(backend, name, f"{type(exc).__name__}: {exc}")
            res.save()
    res.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
