"""The ceiling of bench/http_bench.py: a bare FastAPI app served exactly as `outlast server`
serves its API, to measure how close outlast's trigger endpoint comes to it.

    python bench/http_ceiling_app.py noop   --port P
    python bench/http_ceiling_app.py insert --port P --database-url URL

Same ASGI server and options (`outlast._cli_serving._uvicorn_server`: uvicorn, one
process, log level warning, no lifespan), same event loop (`outlast._loop.run`, uvloop
where installed), same route and request body as outlast's trigger endpoint:

- ``noop`` answers ``{"id": ..., "isCached": false}`` after FastAPI parsed and validated
  the JSON body (a typical async FastAPI endpoint with a body model) and writes nothing.
- ``insert`` does the same and writes one row per request, autocommit, through a psycopg
  connection pool (PostgreSQL) or one sqlite3 connection under a lock (SQLite, WAL,
  synchronous=FULL like outlast's default), in FastAPI's thread pool as a plain ``def``
  endpoint with a blocking driver would.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sqlite3
import threading
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from outlast._cli_serving import _uvicorn_server
from outlast._loop import run as run_loop


class Body(BaseModel):
    payload: Any = None
    options: dict[str, Any] | None = None


def _new_id() -> str:
    return "run_" + secrets.token_hex(12)


def noop_app() -> FastAPI:
    app = FastAPI()

    @app.post("/api/v1/tasks/{task_id}/trigger")
    async def trigger(task_id: str, body: Body) -> dict[str, Any]:
        return {"id": _new_id(), "isCached": False}

    @app.get("/api/v1/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


_CREATE = ("CREATE TABLE IF NOT EXISTS bare_runs (id TEXT PRIMARY KEY, task_id TEXT NOT NULL, "
           "payload TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)")


def insert_app(url: str) -> FastAPI:
    import time

    import orjson

    app = FastAPI()
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_CREATE)
        lock = threading.Lock()

        def insert(row: tuple[str, str, str, float]) -> None:
            with lock:
                conn.execute("INSERT INTO bare_runs VALUES (?, ?, ?, ?)", row)
    else:
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(url, min_size=4, max_size=8, kwargs={"autocommit": True},
                              open=True)
        with pool.connection() as c:
            c.execute(_CREATE)

        def insert(row: tuple[str, str, str, float]) -> None:
            with pool.connection() as c:
                c.execute("INSERT INTO bare_runs VALUES (%s, %s, %s, %s)", row)

    @app.post("/api/v1/tasks/{task_id}/trigger")
    def trigger(task_id: str, body: Body) -> dict[str, Any]:
        run_id = _new_id()
        insert((run_id, task_id, orjson.dumps(body.payload).decode(), time.time()))
        return {"id": run_id, "isCached": False}

    @app.get("/api/v1/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["noop", "insert"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--database-url", default="")
    ap.add_argument("--loop", default="auto")
    args = ap.parse_args()
    app = noop_app() if args.kind == "noop" else insert_app(args.database_url)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = _uvicorn_server(app, args.host, args.port)
        serving = asyncio.create_task(server.serve())
        await stop.wait()
        server.should_exit = True
        await serving

    run_loop(serve(), args.loop, join_threads=True)


if __name__ == "__main__":
    main()
