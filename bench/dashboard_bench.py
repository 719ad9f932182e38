"""How fast the dashboard renders over a large runs table. Prints figures; never a timed test.

    .venv/bin/python bench/dashboard_bench.py [--runs 10000] [--reps 30]
                                              [--backend sqlite|postgres|both]

Seeds N runs (five tasks, a mix of statuses, one run in ten tagged) straight through the
store, then requests each page in-process (httpx over ASGI, so the figures are the app's
own time: store queries plus template rendering, no network) and prints the median and
p95 per page. The runs list pages by the id cursor, so a page deep in the table should
cost what the first one does.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as c
import httpx

from outlast._ids import new_id
from outlast.server import create_app
from outlast.server.dashboard import mount
from outlast.store import open_store
from outlast.store.base import NewRun, Store

TASKS = [f"bench-{x}" for x in "abcde"]


def seed(store: Store, n: int) -> list[str]:
    rng = random.Random(7)
    ids: list[str] = []
    batch: list[NewRun] = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        batch.append(NewRun(
            id=new_id("run"), env="dev", task_id=task, queue=f"task/{task}",
            payload=f'{{"i": {i}}}', max_attempts=3,
            tags=["vip"] if i % 10 == 0 else [],
            idempotency_key=f"key-{i}" if i % 100 == 0 else None,
        ))
        if len(batch) == 1000:
            ids += [r.id for r in store.trigger(batch)]
            batch = []
    if batch:
        ids += [r.id for r in store.trigger(batch)]
    # Most runs finished, some failed, the newest still queued; durations 10 ms to 5 s.
    raw: Any = store
    with raw._transaction() as tx:
        for run_id in ids[: int(n * 0.9)]:
            status = "FAILED" if rng.random() < 0.05 else "COMPLETED"
            raw._raw(tx, "UPDATE runs SET status = :s, started_at = created_at, "
                         "finished_at = created_at + :d WHERE id = :id",
                     {"s": status, "d": rng.uniform(0.01, 5.0), "id": run_id})
    return sorted(ids)


async def measure(store: Store, ids: list[str], reps: int) -> list[tuple[str, float, float, int]]:
    app = create_app(store, dashboard=False)
    mount(app, store, require_login=False)
    deep = ids[len(ids) // 10]  # a cursor nine tenths of the way down
    pages = [
        ("runs: first page", "/runs"),
        ("runs: status=COMPLETED", "/runs?status=COMPLETED"),
        ("runs: task=bench-c", "/runs?task=bench-c"),
        ("runs: tag=vip", "/runs?tag=vip"),
        ("runs: created last 1h", "/runs?range=1h"),
        ("runs: search by id", f"/runs?search={ids[len(ids) // 2]}"),
        ("runs: page 90% deep (cursor)", f"/runs?before={deep}"),
        ("live poll: /dashboard-api/runs", "/dashboard-api/runs"),
        ("run detail", f"/runs/{ids[-1]}"),
        ("tasks (counts, p50/p95 7d)", "/tasks"),
        ("queues", "/queues"),
    ]
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        for label, path in pages:
            r = await http.get(path)
            assert r.status_code == 200, (path, r.status_code)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                r = await http.get(path)
                times.append((time.perf_counter() - t0) * 1000)
            rows = r.text.count("<tr data-href=")
            out.append((label, c.percentile(times, 50), c.percentile(times, 95), rows))
    return out


def run_backend(backend: str, n: int, reps: int) -> None:
    if backend == "sqlite":
        tmp = tempfile.TemporaryDirectory()
        urls = iter([f"sqlite:///{tmp.name}/bench.db"])
        ctx: Any = None
    else:
        ctx = c.fresh_pg_database("outlast_dashbench")
        urls = iter([ctx.__enter__()])
    try:
        store = open_store(next(urls))
        store.migrate()
        t0 = time.perf_counter()
        ids = seed(store, n)
        seeded = time.perf_counter() - t0
        results = asyncio.run(measure(store, ids, reps))
        store.close()
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    print(f"\n{backend}: {n:,} runs (seeded in {seeded:.1f} s), {reps} requests per page")
    print(f"  {'page':36} {'median':>9} {'p95':>9} {'rows':>5}")
    for label, p50, p95, rows in results:
        print(f"  {label:36} {p50:7.1f}ms {p95:7.1f}ms {rows:5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for b in backends:
        run_backend(b, args.runs, args.reps)


if __name__ == "__main__":
    main()
