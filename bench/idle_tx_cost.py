"""What idle_in_transaction_session_timeout costs a transaction: two stores on one fresh
PostgreSQL database, one with OUTLAST_PG_IDLE_TX_TIMEOUT=0 (no bound) and one with the
default (10 s), each with a pool of one connection, run claim-shaped transactions (the
commit transaction in pipeline mode, three statements) alternately.

    .venv/bin/python bench/idle_tx_cost.py [--n N] [--reps R] [--strace]

Prints each arm's median microseconds per transaction and their ratio; with --strace, the
syscalls of each arm's server process over N transactions (`strace -c`), which shows
whether the bound costs the server anything per transaction (a timer armed each time the
session goes idle in a transaction). Writes nothing under bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outlast.store import open_store
from outlast.store.postgres import PostgresStore

PG = "postgresql://postgres@127.0.0.1:5432"


def transactions(store: PostgresStore, n: int) -> float:
    """Microseconds per transaction over ``n`` claim-shaped transactions."""
    t0 = time.perf_counter()
    for _ in range(n):
        with store._commit_transaction() as tx:
            for key in ("a", "b", "c"):
                tx.q("get_setting", key=key)
    return (time.perf_counter() - t0) / n * 1e6


def syscalls(store: PostgresStore, n: int) -> str:
    with store._pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert row is not None
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as out:
        tracer = subprocess.Popen(["strace", "-c", "-p", str(row["pid"]), "-o", out.name])
        time.sleep(0.5)  # attached
        transactions(store, n)
        tracer.terminate()
        tracer.wait()
        return out.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--strace", action="store_true")
    args = ap.parse_args()
    name = f"bench_idle_tx_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    url = f"{PG}/{name}"
    try:
        open_store(url).migrate()
        arms = {"none": PostgresStore(url, max_size=1, idle_tx_timeout=0),
                "10 s": PostgresStore(url, max_size=1)}
        for store in arms.values():
            transactions(store, 200)  # warm: the connection, prepared statements
        if args.strace:
            for arm, store in arms.items():
                print(f"-- {arm}\n{syscalls(store, args.n)}")
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for rep in range(args.reps):
            order = list(arms) if rep % 2 == 0 else list(reversed(arms))
            for arm in order:
                times[arm].append(transactions(arms[arm], args.n))
        for arm, runs in times.items():
            print(f"{arm}: median {statistics.median(runs):.0f} us/transaction "
                  f"({', '.join(f'{t:.0f}' for t in runs)})")
        ratio = statistics.median(times["10 s"]) / statistics.median(times["none"])
        print(f"10 s / none: {ratio:.3f}")
        for store in arms.values():
            store.close()
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


if __name__ == "__main__":
    main()
