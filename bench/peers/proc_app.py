"""The Procrastinate app that procrastinate_bench.py defers to and runs workers of."""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_DSN", "")))


@app.task(name="noop")
async def noop() -> None:
    return None
