"""What grouping failures costs (the errors page and run alerts): the scheduler's failure
scan over N fresh failures, and one idle scan beside a large history. Nothing here touches
a worker's path: a failing run's commit writes nothing extra; this measures the tick's
side. Figures, not a test.

    .venv/bin/python bench/failure_scan.py [--failures 10000] [--history 100000]
                                           [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid

import psycopg

from outlast._clock import FakeClock
from outlast.store import open_store
from outlast.store.base import NewRun

PG = "postgresql://postgres@127.0.0.1:5432/"


def _runs(n: int, task: str) -> list[NewRun]:
    return [
        NewRun(id=f"run_{task}_{i:09d}", env="dev", task_id=task, queue=f"task/{task}",
               payload="{}", max_attempts=1)
        for i in range(n)
    ]


def _finish(url: str, task: str, status: str, error: str | None, at: float) -> None:
    """End runs by SQL (a bench shortcut: a worker would take minutes for 100,000)."""
    sql = ("UPDATE runs SET status = {p}, error = {p}, finished_at = {p} + "
           "(CAST(SUBSTR(id, LENGTH(id) - 8) AS INTEGER) * 0.0001) WHERE task_id = {p}")
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql.format(p="?"), (status, error, at, task))
    else:
        with psycopg.connect(url) as conn:
            conn.execute(sql.format(p="%s"), (status, error, at, task))


def measure(url: str, failures: int, history: int) -> dict[str, float]:
    clock = FakeClock(1_800_000_000.0)
    store = open_store(url, clock)
    store.migrate()
    for start in range(0, history, 10_000):
        store.trigger(_runs(min(10_000, history - start), f"done{start}"))
        _finish(url, f"done{start}", "COMPLETED", None, clock.now() - 3600)
    store.trigger(_runs(failures, "boom"))
    shapes = ['{"type": "ValueError", "message": "row %d is bad", "traceback": ""}',
              '{"type": "KeyError", "message": "order %d", "traceback": ""}']
    _finish(url, "boom", "FAILED", shapes[0] % 7, clock.now())
    clock.advance(60)
    started = time.perf_counter()
    grouped = 0
    while (n := store.scan_failures().failures):
        grouped += n
    total = time.perf_counter() - started
    idle = []
    for _ in range(20):
        t = time.perf_counter()
        store.scan_failures()
        idle.append(time.perf_counter() - t)
    store.close()
    assert grouped == failures, grouped
    return {"per_failure_us": total / failures * 1e6, "scan_s": total,
            "idle_scan_ms": statistics.median(idle) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--failures", type=int, default=10_000)
    ap.add_argument("--history", type=int, default=100_000)
    ap.add_argument("--backend", default="both")
    args = ap.parse_args()
    out = {}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            out["sqlite"] = measure(f"sqlite:///{d}/scan.db", args.failures, args.history)
    if args.backend in ("postgres", "both"):
        name = "bench_scan_" + uuid.uuid4().hex[:8]
        with psycopg.connect(PG + "postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        try:
            out["postgres"] = measure(PG + name, args.failures, args.history)
        finally:
            with psycopg.connect(PG + "postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
