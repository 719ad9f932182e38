"""Triggers per second over HTTP: 8 concurrent clients against one `outlast server`.

    .venv/bin/python bench/http_bench.py [--backend sqlite|postgres|both] [--n 4000]
                                         [--clients 8] [--reps 3]

Prints runs/s and per-request latency p50/p99 (median of the repetitions, with min-max).
No worker runs: this measures the accept path (validate, commit, answer) alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("OUTLAST_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _database(backend: str, tmp: Path) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/bench.db", None
    name = f"outlast_httpbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


def _drop(name: str | None) -> None:
    if name:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _outlast(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "outlast", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


async def _load(base: str, key: str, n: int, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(n))
    headers = {"Authorization": f"Bearer {key}"}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            for i in counter:
                t0 = time.perf_counter()
                r = await http.post("/api/v1/tasks/bench-http-noop/trigger",
                                    json={"payload": {"i": i}})
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return n / (time.perf_counter() - t0), latencies


def bench(backend: str, n: int, clients: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url, dbname = _database(backend, Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTLAST_DATABASE_URL": url}
        try:
            _outlast("migrate", "--database-url", url, env=env)
            key = _outlast("keys", "create", "--database-url", url, env=env)
            # Publish the task definition the way a worker would, then stop it.
            subprocess.run(
                [sys.executable, "-c",
                 "import asyncio, bench.http_bench_app as a, outlast;"
                 "from outlast.store import open_store;"
                 f"w=outlast.Worker(open_store({url!r}), tasks={{'bench-http-noop': a.noop}});"
                 "asyncio.run(w.start(background=False)); asyncio.run(w.shutdown(0))"],
                env=env, cwd=ROOT, check=True,
            )
            port = _free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "outlast", "server", "--database-url", url,
                 "--host", "127.0.0.1", "--port", str(port), "--no-scheduler"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                for _ in range(100):
                    try:
                        if httpx.get(f"{base}/api/v1/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                rate, lat = asyncio.run(_load(base, key, n, clients))
            finally:
                server.terminate()
                server.wait(10)
        finally:
            _drop(dbname)
    lat.sort()
    return rate, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"HTTP triggers, {args.clients} concurrent clients, {args.n} triggers per repetition")
    print(f"{'backend':10} {'triggers/s (min-max)':28} {'p50 ms':>8} {'p99 ms':>8}")
    for backend in backends:
        results = [bench(backend, args.n, args.clients) for _ in range(args.reps)]
        rates = [r[0] for r in results]
        p50 = statistics.median(r[1] for r in results)
        p99 = statistics.median(r[2] for r in results)
        spread = f"{statistics.median(rates):8.0f} ({min(rates):.0f}-{max(rates):.0f})"
        print(f"{backend:10} {spread:28} {p50:8.2f} {p99:8.2f}")


if __name__ == "__main__":
    main()
