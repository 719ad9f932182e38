"""Procrastinate on PostgreSQL: the outlast workloads that apply to a job queue.

Run with the peers' venv: bench/.peers-venv/bin/python bench/peers/procrastinate_bench.py.
Workers are ``procrastinate worker`` processes with its defaults (concurrency 1,
LISTEN/NOTIFY, 5 s polling fallback) and with ``--concurrency 10``; timings come from
``procrastinate_events``, which its triggers fill (deferred / started / succeeded) with
the database's clock. A killed worker's jobs stay ``doing`` until a
``retry_stalled_jobs`` task that the user schedules: no recovery figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common as c  # noqa: E402

LOGS = Path("/tmp/outlast-bench-logs")
CHUNK = 1000


def env(url: str) -> dict[str, str]:
    return {**os.environ, "BENCH_DSN": url, "PYTHONPATH": str(HERE)}


def cli(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "procrastinate", "--app=proc_app.app", *args]


def install(url: str) -> None:
    subprocess.run(cli(url, "schema", "--apply"), env=env(url), cwd=HERE, check=True,
                   stdout=subprocess.DEVNULL, timeout=120)


def spawn(url: str, concurrency: int | None) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"procrastinate-{int(time.time() * 1000)}.log", "wb")  # noqa: SIM115
    extra = ["--concurrency", str(concurrency)] if concurrency else []
    return subprocess.Popen(cli(url, "worker", *extra), env=env(url), cwd=HERE, stdout=log,
                            stderr=subprocess.STDOUT)


def one(url: str, sql: str, *params: Any) -> tuple[Any, ...]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return tuple(row)


def count(url: str, kind: str) -> int:
    return int(one(url, "SELECT count(*) FROM procrastinate_events WHERE type = %s", kind)[0])


def _app(url: str) -> Any:
    """A defer-only app on this repetition's database (workers know tasks by name)."""
    from procrastinate import App, PsycopgConnector

    return App(connector=PsycopgConnector(conninfo=url))


async def _enqueue(url: str, n_single: int, n_bulk: int) -> tuple[float, float]:
    app = _app(url)
    async with app.open_async():
        task = app.configure_task(name="noop")
        await task.defer_async()
        t0 = time.perf_counter()
        for _ in range(n_single):
            await task.defer_async()
        single = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, n_bulk, CHUNK):
            await task.batch_defer_async(*({} for _ in range(min(CHUNK, n_bulk - i))))
        bulk = time.perf_counter() - t0
    return single, bulk


def bench_enqueue(args: argparse.Namespace, res: c.Results) -> None:
    n_single = min(args.n, args.n_single)
    for _ in range(args.reps):
        with c.fresh_pg_database("bench_proc") as url:
            install(url)
            single, bulk = asyncio.run(_enqueue(url, n_single, args.n))
        res.record("postgres", "enqueue_single", "runs/s", n_single / single,
                   note="defer_async, one job per call")
        res.record("postgres", "enqueue_bulk", "runs/s", args.n / bulk,
                   note=f"batch_defer_async, {CHUNK} per call")


def bench_drain(args: argparse.Namespace, res: c.Results) -> None:
    for conc, workload in ((None, "cdefault"), (10, "c10")):
        note = "default concurrency (1)" if conc is None else "--concurrency 10"
        for _ in range(args.reps):
            with c.fresh_pg_database("bench_proc") as url:
                install(url)
                asyncio.run(_enqueue(url, 0, args.n))
                proc = spawn(url, conc)
                try:
                    c.wait_until(lambda url=url: count(url, "succeeded") >= args.n,
                                 120 + args.n / 10, 0.3, "procrastinate drained")
                    rss = c.tree_peak_rss_mb(proc.pid)
                finally:
                    c.stop_process(proc)
                first, last = one(url, "SELECT extract(epoch FROM min(at) FILTER (WHERE type = "
                                  "'started')), extract(epoch FROM max(at) FILTER (WHERE type = "
                                  "'succeeded')) FROM procrastinate_events")
            res.record("postgres", f"drain_{workload}", "runs/s",
                       args.n / (float(last) - float(first)), note=f"N={args.n}, {note}")
            res.record("postgres", f"rss_{workload}", "MiB", rss, higher_is_better=False,
                       note=f"VmHWM of `procrastinate worker` draining N={args.n}")


async def _latency(url: str, samples: int) -> None:
    app = _app(url)
    rng = random.Random(7)
    async with app.open_async():
        task = app.configure_task(name="noop")
        for _ in range(samples + 5):
            before = count(url, "succeeded")
            await task.defer_async()
            deadline = time.monotonic() + 10
            while count(url, "succeeded") <= before and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            await asyncio.sleep(rng.uniform(0.0, 0.03))


def bench_latency(args: argparse.Namespace, res: c.Results) -> None:
    import psycopg

    for _ in range(args.reps):
        with c.fresh_pg_database("bench_proc") as url:
            install(url)
            proc = spawn(url, None)
            try:
                time.sleep(3)
                asyncio.run(_latency(url, args.samples))
            finally:
                c.stop_process(proc)
            with psycopg.connect(url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT job_id, type::text, extract(epoch FROM at) FROM procrastinate_events "
                    "ORDER BY job_id, id").fetchall()
        by_job: dict[int, dict[str, float]] = {}
        for job_id, kind, ts in rows:
            by_job.setdefault(job_id, {})[kind] = float(ts)
        jobs = [by_job[j] for j in sorted(by_job)][5:]
        start = [(j["started"] - j["deferred"]) * 1000 for j in jobs if "started" in j]
        done = [(j["succeeded"] - j["deferred"]) * 1000 for j in jobs if "succeeded" in j]
        note = f"{len(start)} samples; events deferred→started/succeeded; LISTEN/NOTIFY"
        for name, vals in (("start", start), ("done", done)):
            for p in (50, 99):
                res.record("postgres", f"latency_{name}_p{p}", "ms", c.percentile(vals, p),
                           higher_is_better=False, note=note)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-single", type=int, default=2_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--only", default="")
    args = p.parse_args()
    from importlib.metadata import version

    res = c.Results("procrastinate", " ".join(["bench/.peers-venv/bin/python", *sys.argv]),
                    c.now_iso(), {"procrastinate": version("procrastinate"),
                                  "psycopg": version("psycopg"),
                                  "Python": sys.version.split()[0]})
    res.fail("postgres", "recovery_s", "not measured: a killed worker's jobs stay `doing` "
             "until the user schedules a retry_stalled_jobs task (no recovery of its own)")
    workloads = {"enqueue": bench_enqueue, "drain": bench_drain, "latency": bench_latency}
    only = [w for w in args.only.split(",") if w]
    for name, fn in workloads.items():
        if only and name not in only:
            continue
        print(f"[procrastinate] {name}", flush=True)
        try:
            fn(args, res)
        except Exception as exc:
            res.fail("postgres", name, f"{type(exc).__name__}: {exc}")
        res.save()
    res.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
