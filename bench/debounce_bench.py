"""A single publish to a plain, a debounced and a batched subscriber, interleaved one for
one on one fresh database per backend: median latency of each (issue 20, part 5).

    .venv/bin/python bench/debounce_bench.py [--n N] [--backend sqlite|postgres|both]

A debounced or batched publish locks its group's row and changes the pending run in place
(an upsert and an update) where a plain one inserts a run; ten keys, so most publishes
join a pending run. Prints medians; writes nothing under bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outlast import Batch, Debounce, task
from outlast.client import Client
from outlast.store import open_store

PG = "postgresql://postgres@127.0.0.1:5432"


@task(id="bench-db-plain", on=["bench.plain"])
async def plain(payload: Any) -> None: ...


@task(id="bench-db-debounce", on=["bench.debounce"],
      debounce=Debounce(key="data.k", period=3600))
async def debounced(payload: Any) -> None: ...


@task(id="bench-db-batch", on=["bench.batch"], batch=Batch(max_size=100, timeout=3600))
async def batched(payload: Any) -> None: ...


def measure(url: str, n: int) -> dict[str, float]:
    store = open_store(url)
    store.migrate()
    store.publish_tasks("bench", [t.definition() for t in (plain, debounced, batched)])
    client = Client(store=store, env="bench")
    took: dict[str, list[float]] = {"plain": [], "debounce": [], "batch": []}
    for i in range(n):
        for kind, times in took.items():
            t0 = time.perf_counter()
            client.publish(f"bench.{kind}", {"k": i % 10, "i": i})
            times.append(time.perf_counter() - t0)
    store.close()
    return {k: statistics.median(v) * 1000 for k, v in took.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--backend", default="both", choices=("sqlite", "postgres", "both"))
    args = p.parse_args()
    for backend in ("sqlite", "postgres"):
        if args.backend not in (backend, "both"):
            continue
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                ms = measure(f"sqlite:///{tmp}/bench.db", args.n)
        else:
            name = f"outlast_bench_db_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {name}")
            try:
                ms = measure(f"{PG}/{name}", args.n)
            finally:
                with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
                    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        print(f"{backend}: single publish, median of {args.n}: plain {ms['plain']:.2f} ms, "
              f"debounced {ms['debounce']:.2f} ms, batched {ms['batch']:.2f} ms")


if __name__ == "__main__":
    main()
