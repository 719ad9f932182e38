"""PgQueuer on PostgreSQL: the outlast workloads that apply to a job queue.

Run with the peers' venv: bench/.peers-venv/bin/python bench/peers/pgqueuer_bench.py.
Workers are ``pgq run`` processes with PgQueuer's defaults (batch 10, asyncpg, durable
tables); timings come from ``pgqueuer_log``, where PgQueuer records every job's
queued / picked / successful transition with the database's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common as c  # noqa: E402

VENV_BIN = Path(sys.executable).parent
LOGS = Path("/tmp/outlast-bench-logs")
CHUNK = 1000


def pg_env(url: str) -> dict[str, str]:
    dbname = url.rsplit("/", 1)[1]
    return {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres",
            "PGDATABASE": dbname, "BENCH_DSN": url, "PYTHONPATH": str(HERE)}


def install(url: str) -> None:
    subprocess.run([str(VENV_BIN / "pgq"), "install"], env=pg_env(url), check=True,
                   stdout=subprocess.DEVNULL, timeout=120)


def spawn(url: str, limit: int = 0, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"pgq-{int(time.time() * 1000)}.log", "wb")  # noqa: SIM115
    env = {**pg_env(url), "BENCH_LIMIT": str(limit)}
    return subprocess.Popen([sys.executable, str(HERE / "pgq_app.py"), *(extra or [])],
                            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)


async def _connect(url: str) -> Any:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(url)
    return conn, Queries(AsyncpgDriver(conn))


def one(url: str, sql: str, *params: Any) -> tuple[Any, ...]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return tuple(row)


def count_log(url: str, status: str, entrypoint: str = "noop") -> int:
    return int(one(url, "SELECT count(*) FROM pgqueuer_log WHERE status = %s AND entrypoint = %s",
                   status, entrypoint)[0])


async def enqueue_bulk(url: str, n: int, entrypoint: str = "noop") -> float:
    conn, q = await _connect(url)
    t0 = time.perf_counter()
    for i in range(0, n, CHUNK):
        k = min(CHUNK, n - i)
        await q.enqueue([entrypoint] * k, [None] * k, [0] * k)
    dt = time.perf_counter() - t0
    await conn.close()
    return dt


async def enqueue_single(url: str, n: int) -> float:
    conn, q = await _connect(url)
    await q.enqueue("noop", None)
    t0 = time.perf_counter()
    for _ in range(n):
        await q.enqueue("noop", None)
    dt = time.perf_counter() - t0
    await conn.close()
    return dt


def bench_enqueue(args: argparse.Namespace, res: c.Results) -> None:
    n_single = min(args.n, args.n_single)
    for _ in range(args.reps):
        with c.fresh_pg_database("bench_pgq") as url:
            install(url)
            dt = asyncio.run(enqueue_single(url, n_single))
            res.record("postgres", "enqueue_single", "runs/s", n_single / dt,
                       note="Queries.enqueue, one job per call")
            dt = asyncio.run(enqueue_bulk(url, args.n))
            res.record("postgres", "enqueue_bulk", "runs/s", args.n / dt,
                       note=f"Queries.enqueue with lists, {CHUNK} per call")


def bench_drain(args: argparse.Namespace, res: c.Results) -> None:
    for limit, workload in ((0, "cdefault"), (10, "c10")):
        note = ("defaults: batch 10, no concurrency cap" if not limit
                else "entrypoint concurrency_limit=10")
        for _ in range(args.reps):
            with c.fresh_pg_database("bench_pgq") as url:
                install(url)
                asyncio.run(enqueue_bulk(url, args.n))
                proc = spawn(url, limit)
                try:
                    c.wait_until(lambda url=url: count_log(url, "successful") >= args.n,
                                 60 + args.n / 20, 0.2, "pgqueuer drained")
                    rss = c.tree_peak_rss_mb(proc.pid)
                finally:
                    c.stop_process(proc)
                first, last = one(url, "SELECT extract(epoch FROM min(created) FILTER (WHERE "
                                  "status = 'picked')), extract(epoch FROM max(created)) FROM "
                                  "pgqueuer_log WHERE entrypoint = 'noop'")
            res.record("postgres", f"drain_{workload}", "runs/s",
                       args.n / (float(last) - float(first)), note=f"N={args.n}, {note}")
            res.record("postgres", f"rss_{workload}", "MiB", rss, higher_is_better=False,
                       note=f"VmHWM of `pgq run` draining N={args.n}")


async def _latency(url: str, samples: int) -> None:
    conn, q = await _connect(url)
    import random

    rng = random.Random(7)
    for i in range(samples + 5):
        before = count_log(url, "successful")
        await q.enqueue("noop", None)
        deadline = time.monotonic() + 10
        while count_log(url, "successful") <= before and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        del i
        await asyncio.sleep(rng.uniform(0.0, 0.03))
    await conn.close()


def bench_latency(args: argparse.Namespace, res: c.Results) -> None:
    import psycopg

    for _ in range(args.reps):
        with c.fresh_pg_database("bench_pgq") as url:
            install(url)
            proc = spawn(url)
            try:
                time.sleep(3)  # let `pgq run` start and LISTEN
                asyncio.run(_latency(url, args.samples))
            finally:
                c.stop_process(proc)
            with psycopg.connect(url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT job_id, status, extract(epoch FROM created) FROM pgqueuer_log "
                    "WHERE entrypoint = 'noop' ORDER BY job_id, id").fetchall()
        by_job: dict[int, dict[str, float]] = {}
        for job_id, status, ts in rows:
            by_job.setdefault(job_id, {})[status] = float(ts)
        jobs = [by_job[j] for j in sorted(by_job)][5:]
        start = [(j["picked"] - j["queued"]) * 1000 for j in jobs if "picked" in j]
        for p in (50, 99):
            res.record("postgres", f"latency_start_p{p}", "ms", c.percentile(start, p),
                       higher_is_better=False,
                       note=f"{len(start)} samples; queued→picked in pgqueuer_log; LISTEN/NOTIFY")


def bench_recovery(args: argparse.Namespace, res: c.Results) -> None:
    """SIGKILL the worker holding a job; PgQueuer re-picks it once its heartbeat is older
    than heartbeat_timeout (default 30 s), at the survivor's next dequeue (a NOTIFY or its
    dequeue_timeout poll, default 30 s)."""
    for _ in range(args.kills):
        with c.fresh_pg_database("bench_pgq") as url:
            install(url)
            victim = spawn(url)
            survivor = None
            try:
                time.sleep(3)  # let `pgq run` start
                asyncio.run(_enqueue_one(url, "crash", b"90"))
                c.wait_until(lambda url=url: count_log(url, "picked", "crash") >= 1, 60, 0.02,
                             "crash job picked")
                survivor = spawn(url)  # started after the pick, so only the victim holds it
                time.sleep(3)
                killed_at = time.time()
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                c.wait_until(lambda url=url: count_log(url, "picked", "crash") >= 2, 150, 0.05,
                             "crash job re-picked")
                repicked = float(one(url, "SELECT extract(epoch FROM max(created)) FROM "
                                     "pgqueuer_log WHERE entrypoint = 'crash' AND "
                                     "status = 'picked'")[0])
            finally:
                c.stop_process(victim)
                if survivor is not None:
                    survivor.send_signal(signal.SIGKILL)
                    survivor.wait(timeout=10)
        res.record("postgres", "recovery_s", "s", repicked - killed_at, higher_is_better=False,
                   note="SIGKILL to re-pick by a surviving worker (defaults: heartbeat_timeout "
                        "30 s, dequeue_timeout 30 s)")


async def _enqueue_one(url: str, entrypoint: str, payload: bytes | None) -> None:
    conn, q = await _connect(url)
    await q.enqueue(entrypoint, payload)
    await conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-single", type=int, default=2_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--only", default="")
    args = p.parse_args()
    from importlib.metadata import version

    res = c.Results("pgqueuer", " ".join(["bench/.peers-venv/bin/python", *sys.argv]),
                    c.now_iso(), {"pgqueuer": version("pgqueuer"),
                                  "asyncpg": version("asyncpg"),
                                  "Python": sys.version.split()[0]},
                    {"PostgreSQL": "durable tables (pgq install default)",
                     "worker": "bench/peers/pgq_app.py, which runs what `pgq run` runs with its "
                               "defaults; pgqueuer 1.6.0's own `pgq run` fails at start-up here "
                               "(its --log-level default reaches logging as a str)"})
    workloads = {"enqueue": bench_enqueue, "drain": bench_drain, "latency": bench_latency,
                 "recovery": bench_recovery}
    only = [w for w in args.only.split(",") if w]
    for name, fn in workloads.items():
        if only and name not in only:
            continue
        print(f"[pgqueuer] {name}", flush=True)
        try:
            fn(args, res)
        except Exception as exc:
            res.fail("postgres", name, f"{type(exc).__name__}: {exc}")
        res.save()
    res.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
