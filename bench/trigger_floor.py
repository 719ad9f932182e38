"""What one durable trigger costs against the cheapest durable write: a profile, not a
benchmark of record.

    .venv/bin/python bench/trigger_floor.py [--n 2000] [--reps 3] [--celery RUNS_PER_S]

Per backend, in one sitting, each figure the median of --reps loops of --n calls:

- floor: a bare autocommit INSERT of a two-column row (id, v), one commit each, under
  the same durability settings (PostgreSQL's defaults; SQLite WAL with synchronous=FULL);
- statement: outlast's own insert of a run, the rows built beforehand (SQLite also with
  synchronous=OFF, which leaves its CPU);
- trigger: the whole ``Client.trigger`` of a no-op task, as bench/outlast_bench.py times it.

With ``--celery`` (Celery's one-by-one figure from the same run_all.py run) it prints what
2x that rate leaves per trigger. bench/README.md#limits quotes these figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as c
import outlast_tasks as t

from outlast.client import _NO_OPTIONS, Client, prepare_run
from outlast.store import open_store

ENV = "bench"


def per_call_us(n: int, call: Callable[[int], Any]) -> float:
    began = time.perf_counter()
    for i in range(n):
        call(i)
    return 1e6 * (time.perf_counter() - began) / n


def one(backend: str, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with c.fresh_database(backend, "outlast_floor") as url:
        store = open_store(url)
        store.migrate()
        store.close()
        client = Client(url, env=ENV)
        client.trigger(t.noop, -1)  # the schema check, and the queue's rows made once
        store = client.store
        out["trigger"] = per_call_us(n, lambda i: client.trigger(t.noop, i))
        now = store.now()
        rows = [store._run_row(prepare_run(store, ENV, t.noop, i, _NO_OPTIONS), now)
                for i in range(2 * n)]
        if backend == "sqlite":
            conn: Any = store._conn  # type: ignore[attr-defined]
            sql = store.q["insert_run"]
            out["statement"] = per_call_us(n, lambda i: conn.execute(sql, rows[i]))
            conn.execute("PRAGMA synchronous=OFF")
            out["statement, synchronous=OFF"] = per_call_us(
                n, lambda i: conn.execute(sql, rows[n + i]))
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE floor (id TEXT PRIMARY KEY, v TEXT)")
            out["floor"] = per_call_us(
                n, lambda i: conn.execute("INSERT INTO floor VALUES (?, ?)", (f"f{i}", "x")))
        else:
            sql = store.q["insert_run_alone"]
            with store._pool.connection() as pg:  # type: ignore[attr-defined]
                for row in rows:
                    row["channel"] = "outlast_floor"  # nobody listens: no worker is woken
                out["statement"] = per_call_us(n, lambda i: pg.execute(sql, rows[i]))
                pg.execute("CREATE TABLE floor (id TEXT PRIMARY KEY, v TEXT)")
                out["floor"] = per_call_us(
                    n, lambda i: pg.execute("INSERT INTO floor VALUES (%s, %s)", (f"f{i}", "x")))
        client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="calls per loop")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--celery", type=float, default=None,
                   help="Celery's one-by-one runs/s from the same run_all.py run")
    args = p.parse_args()
    for backend in ("postgres", "sqlite"):
        reps = [one(backend, args.n) for _ in range(args.reps)]
        for name in reps[0]:
            us = [r[name] for r in reps]
            med = statistics.median(us)
            print(f"{backend:8s} {name:28s} {med:7.1f} us ({min(us):.1f}-{max(us):.1f})"
                  f" = {1e6 / med:7,.0f}/s", flush=True)
    if args.celery:
        print(f"2x Celery ({args.celery:,.0f}/s) leaves {1e6 / (2 * args.celery):.1f} us a trigger")


if __name__ == "__main__":
    main()
