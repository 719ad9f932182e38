"""Celery with a Redis broker: the outlast workloads that apply to a job queue.

Run with the peers' venv: bench/.peers-venv/bin/python bench/peers/celery_bench.py.
Workers are ``celery worker`` processes with Celery's defaults (prefork pool of one
process per core, prefetch multiplier 4, early acks) and with ``--concurrency 10``. The
broker is Redis database 11 on 127.0.0.1, flushed before each repetition. Jobs are not
durable in the sense of the others: Redis persists per its own config, and there is no
result backend.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _common as c  # noqa: E402

LOGS = Path("/tmp/outlast-bench-logs")
CHUNK = 1000


def redis_client() -> Any:
    import celery_app

    return celery_app._redis


def fresh() -> None:
    redis_client().flushdb()  # database 11 only: the benchmark's own


def spawn(concurrency: int | None) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"celery-{int(time.time() * 1000)}.log", "wb")  # noqa: SIM115
    extra = ["--concurrency", str(concurrency)] if concurrency else []
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--loglevel=WARNING",
         *extra], cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)}, stdout=log,
        stderr=subprocess.STDOUT)


def done() -> int:
    return int(redis_client().get("bench:done") or 0)


def bench_enqueue(args: argparse.Namespace, res: c.Results) -> None:
    from celery import group
    from celery_app import noop

    n_single = min(args.n, args.n_single)
    for _ in range(args.reps):
        fresh()
        noop.delay(time.time())
        t0 = time.perf_counter()
        for _ in range(n_single):
            noop.delay(time.time())
        res.record("redis", "enqueue_single", "runs/s", n_single / (time.perf_counter() - t0),
                   note="task.delay(), one message per call")
        t0 = time.perf_counter()
        for i in range(0, args.n, CHUNK):
            group(noop.s(time.time()) for _ in range(min(CHUNK, args.n - i))).apply_async()
        res.record("redis", "enqueue_bulk", "runs/s", args.n / (time.perf_counter() - t0),
                   note=f"group(...).apply_async(), {CHUNK} per call (no bulk publish)")
        fresh()


def bench_drain(args: argparse.Namespace, res: c.Results) -> None:
    from celery import group
    from celery_app import noop

    for conc, workload in ((None, "cdefault"), (10, "c10")):
        note = ("defaults: prefork, one process per core (2)" if conc is None
                else "--concurrency 10 (prefork)")
        for _ in range(args.reps):
            fresh()
            for i in range(0, args.n, CHUNK):
                group(noop.s(0.0) for _ in range(min(CHUNK, args.n - i))).apply_async()
            proc = spawn(conc)
            try:
                c.wait_until(lambda: done() >= args.n, 60 + args.n / 20, 0.2, "celery drained")
                rss = c.tree_peak_rss_mb(proc.pid)
            finally:
                c.stop_process(proc)
            r = redis_client()
            span = float(r.get("bench:last")) - float(r.get("bench:first"))
            res.record("redis", f"drain_{workload}", "runs/s", args.n / span,
                       note=f"N={args.n}, {note}")
            res.record("redis", f"rss_{workload}", "MiB", rss, higher_is_better=False,
                       note=f"VmHWM summed over the worker and its pool processes, N={args.n}")
            fresh()


def bench_latency(args: argparse.Namespace, res: c.Results) -> None:
    from celery_app import noop

    rng = random.Random(7)
    for _ in range(args.reps):
        fresh()
        proc = spawn(None)
        try:
            time.sleep(4)
            for i in range(args.samples + 5):
                before = done()
                noop.delay(time.time())
                c.wait_until(lambda before=before: done() > before, 10, 0.002, "task ran")
                del i
                time.sleep(rng.uniform(0.0, 0.03))
        finally:
            c.stop_process(proc)
        rows = [x.decode().split(",") for x in redis_client().lrange("bench:lat", 0, -1)][5:]
        start = [(float(s) - float(sent)) * 1000 for sent, s in rows]
        for p in (50, 95, 99):
            res.record("redis", f"latency_start_p{p}", "ms", c.percentile(start, p),
                       higher_is_better=False,
                       note=f"{len(start)} samples; delay() call to task body start")
        fresh()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-single", type=int, default=2_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--only", default="")
    p.add_argument("--out", default="", help="write the figures to this JSON file instead "
                   "of bench/results/celery.json")
    args = p.parse_args()
    out = Path(args.out) if args.out else None
    from importlib.metadata import version

    info = redis_client().info("server")
    res = c.Results("celery", " ".join(["bench/.peers-venv/bin/python", *sys.argv]),
                    c.now_iso(), {"celery": version("celery"), "kombu": version("kombu"),
                                  "redis-py": version("redis"),
                                  "Redis": str(info.get("redis_version")),
                                  "Python": sys.version.split()[0]},
                    {"Redis": f"appendonly={redis_client().config_get('appendonly')}"})
    res.fail("redis", "recovery_s", "not measured: with the default early acks a task whose "
             "worker is SIGKILLed is lost; with acks_late Redis redelivers it only after "
             "visibility_timeout (1 h by default)")
    workloads = {"enqueue": bench_enqueue, "drain": bench_drain, "latency": bench_latency}
    only = [w for w in args.only.split(",") if w]
    for name, fn in workloads.items():
        if only and name not in only:
            continue
        print(f"[celery] {name}", flush=True)
        try:
            fn(args, res)
        except Exception as exc:
            res.fail("redis", name, f"{type(exc).__name__}: {exc}")
        res.save(out)
    res.save(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
