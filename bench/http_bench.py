"""HTTP triggers per second against their ceiling: 8 concurrent clients, one run per request.

    .venv/bin/python bench/http_bench.py [--backend sqlite|postgres|both] [--n 4000]
        [--clients 8] [--reps 3] [--warmup 200] [--targets outlast,noop,insert]
        [--src worktree[,REV...]] [--bursts B] [--no-report]

Three servers take the same load in turn, alternating within each repetition (the order
rotates from one repetition to the next), each on a fresh database, served the same way
(uvicorn, one process, the same options and event loop: bench/http_ceiling_app.py uses
outlast's own server set-up):

- ``outlast``: `outlast server` (no scheduler, no worker: the accept path alone — parse,
  authenticate, validate against the task's published schema, commit, answer) and the
  task ``bench-http-noop`` published by a worker that then stopped;
- ``noop``: a bare FastAPI app whose endpoint of the same path parses the same body and
  answers an id, writing nothing: the ceiling;
- ``insert``: the bare app writing one row per request (autocommit INSERT).

With ``--bursts B`` (B > 1) every server of a repetition is up at once, each on its own
fresh database, and the load goes to each in turn in B bursts of n/B requests: on a
machine shared with other work, its slow swings then fall on every server alike (the
servers wait idle between their bursts). Runs/s is then the requests over the time spent
on them.

With several ``--src`` (``--src worktree,main``), ``outlast`` runs once per source in each
repetition (named ``outlast@REV`` after the first), each with its ratios: an A/B in one
sitting. The ceiling apps run from the first source.

Each client is an ``httpx.AsyncClient`` posting one trigger at a time; --warmup requests
per client warm each server up untimed first. Prints runs/s and per-request latency p50/p99
(median of the repetitions, with min-max), and outlast's ratio to the no-op ceiling and
to the one-INSERT endpoint, per alternating repetition. Results go to
bench/results/http.json (bench/RESULTS.md is rebuilt from results/ unless --no-report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

_REVS = c.source_from_argv(sys.argv[1:]).split(",")
SOURCES = {rev: c.outlast_source(rev) for rev in _REVS}
SRC, SRC_DESC = SOURCES[_REVS[0]]

import httpx  # noqa: E402

TARGETS = ("outlast", "noop", "insert")
SYSTEM = {"outlast": "outlast", "noop": "FastAPI no-op", "insert": "FastAPI 1 INSERT"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(rev: str | None = None) -> dict[str, str]:
    path = os.pathsep.join([str(SOURCES[rev][0] if rev else SRC), str(c.ROOT)])
    return {**os.environ, "PYTHONPATH": path}


def _outlast(rev: str | None, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "outlast", *args], env=_env(rev), cwd=c.ROOT,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _prepare_outlast(url: str, rev: str | None = None) -> str:
    """Migrate, make a key, publish the task as a worker would; returns the key."""
    _outlast(rev, "migrate", "--database-url", url)
    key = _outlast(rev, "keys", "create", "--database-url", url)
    subprocess.run(
        [sys.executable, "-c",
         "import asyncio, bench.http_bench_app as a, outlast;"
         "from outlast.store import open_store;"
         f"w=outlast.Worker(open_store({url!r}), tasks={{'bench-http-noop': a.noop}});"
         "asyncio.run(w.start(background=False)); asyncio.run(w.shutdown(0))"],
        env=_env(rev), cwd=c.ROOT, check=True,
    )
    return key


def _rev(target: str) -> str | None:
    """The source of an ``outlast`` target (``outlast@REV``), else None."""
    if not target.startswith("outlast"):
        return None
    return target.partition("@")[2] or _REVS[0]


def _server(target: str, url: str, port: int) -> subprocess.Popen[bytes]:
    if _rev(target) is not None:
        argv = ["-m", "outlast", "server", "--database-url", url, "--host", "127.0.0.1",
                "--port", str(port), "--no-scheduler"]
    else:
        argv = [str(c.BENCH / "http_ceiling_app.py"), target, "--port", str(port),
                "--database-url", url]
    return subprocess.Popen([sys.executable, *argv], env=_env(_rev(target)), cwd=c.ROOT,
                            stdout=subprocess.DEVNULL)


async def _load(base: str, key: str, n: int, clients: int, warmup: int = 200
                ) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {key}"}
    path = "/api/v1/tasks/bench-http-noop/trigger"

    async def client(counter: object, latencies: list[float] | None) -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            for i in counter:  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                r = await http.post(path, json={"payload": {"i": i}})
                if latencies is not None:
                    latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

    warm = iter(range(warmup * clients))
    await asyncio.gather(*(client(warm, None) for _ in range(clients)))
    latencies: list[float] = []
    counter = iter(range(n))
    t0 = time.perf_counter()
    await asyncio.gather(*(client(counter, latencies) for _ in range(clients)))
    return n / (time.perf_counter() - t0), latencies


def one(target: str, backend: str, n: int, clients: int, warmup: int
        ) -> tuple[float, float, float]:
    """runs/s, p50 ms, p99 ms of one server on a fresh database."""
    with c.fresh_database(backend, "httpbench") as url:
        rev = _rev(target)
        key = _prepare_outlast(url, rev) if rev is not None else "none"
        port = _free_port()
        server = _server(target, url, port)
        base = f"http://127.0.0.1:{port}"
        try:
            c.wait_until(lambda: _healthy(base), 30, what=f"{target} server up")
            rate, lat = asyncio.run(_load(base, key, n, clients, warmup))
        finally:
            c.stop_process(server)
    return rate, c.percentile(lat, 50) * 1000, c.percentile(lat, 99) * 1000


def interleaved(targets: list[str], backend: str, n: int, clients: int, warmup: int,
                bursts: int) -> dict[str, tuple[float, float, float]]:
    """Every server up at once, each on its fresh database; ``bursts`` rounds of n/bursts
    requests to each in turn: runs/s (requests over the time spent on them), p50, p99."""
    with contextlib.ExitStack() as stack:
        live: dict[str, tuple[str, str]] = {}
        for target in targets:
            url = stack.enter_context(c.fresh_database(backend, "httpbench"))
            rev = _rev(target)
            key = _prepare_outlast(url, rev) if rev is not None else "none"
            port = _free_port()
            server = _server(target, url, port)
            stack.callback(c.stop_process, server)
            base = f"http://127.0.0.1:{port}"
            c.wait_until(functools.partial(_healthy, base), 30, what=f"{target} server up")
            live[target] = (base, key)
        spent = dict.fromkeys(targets, 0.0)
        lats: dict[str, list[float]] = {t: [] for t in targets}
        for burst in range(bursts):
            for target in targets[burst % len(targets):] + targets[:burst % len(targets)]:
                base, key = live[target]
                rate, lat = asyncio.run(_load(base, key, n // bursts, clients,
                                              warmup if burst == 0 else 10))
                spent[target] += (n // bursts) / rate
                lats[target] += lat
    return {t: ((n // bursts) * bursts / spent[t], c.percentile(lats[t], 50) * 1000,
                c.percentile(lats[t], 99) * 1000) for t in targets}


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/v1/health").status_code == 200
    except httpx.TransportError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=200, help="untimed requests per client")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--src", default="worktree")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--bursts", type=int, default=1,
                    help="B > 1: all servers up at once, B alternating bursts of n/B each")
    args = ap.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    targets = [t for t in args.targets.split(",") if t]
    if "outlast" in targets:  # one outlast per source, side by side
        at = targets.index("outlast")
        targets[at:at + 1] = ["outlast"] + [f"outlast@{rev}" for rev in _REVS[1:]]
    res = c.Results(system="http", command="python bench/http_bench.py " + " ".join(sys.argv[1:]),
                    started=c.now_iso(),
                    versions={f"outlast@{rev}" if i else "outlast": desc
                              for i, (rev, (_, desc)) in enumerate(SOURCES.items())})
    print(f"HTTP triggers, {args.clients} concurrent clients, {args.n} per repetition "
          f"({'; '.join(d for _, d in SOURCES.values())}; every server parses HTTP with "
          f"{_parser()}), started {res.started}", flush=True)
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for rep in range(args.reps):
        order = targets[rep % len(targets):] + targets[:rep % len(targets)]
        for backend in backends:
            got: dict[str, float] = {}
            together = (interleaved(order, backend, args.n, args.clients, args.warmup,
                                    args.bursts) if args.bursts > 1 else {})
            for target in order:
                rate, p50, p99 = together.get(target) or one(target, backend, args.n,
                                                             args.clients, args.warmup)
                got[target] = rate
                figures.setdefault((backend, target), []).append((rate, p50, p99))
                print(f"  rep {rep + 1} {backend:8} {target:8} {rate:8.0f}/s  p50 {p50:6.2f} ms"
                      f"  p99 {p99:6.2f} ms", flush=True)
                _record(res, target, backend, rate, p50, p99)
            for ceiling in ("noop", "insert"):
                for mine in (t for t in got if _rev(t) is not None):
                    if ceiling in got:
                        res.add(c.Metric(_system(mine), backend, f"http_ratio_{ceiling}", "x")
                                ).values.append(got[mine] / got[ceiling])
    _summary(figures, backends, targets, res)
    res.save(c.RESULTS_DIR / "http.json")
    if not args.no_report:
        import _report

        _report.write()


def _parser() -> str:
    """uvicorn's HTTP parser in this interpreter, so in every server of the bench."""
    import importlib.util

    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def _system(target: str) -> str:
    return target if "@" in target else SYSTEM[target]


def _record(res: c.Results, target: str, backend: str, rate: float, p50: float, p99: float
            ) -> None:
    system = _system(target)
    res.add(c.Metric(system, backend, "http_trigger_rate", "runs/s")).values.append(rate)
    res.add(c.Metric(system, backend, "http_trigger_p50", "ms", higher_is_better=False)
            ).values.append(p50)
    res.add(c.Metric(system, backend, "http_trigger_p99", "ms", higher_is_better=False)
            ).values.append(p99)


def _summary(figures: dict[tuple[str, str], list[tuple[float, float, float]]],
             backends: list[str], targets: list[str], res: c.Results) -> None:
    print(f"\n{'backend':9} {'server':18} {'runs/s median (min-max)':26} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for backend in backends:
        for target in targets:
            rows = figures.get((backend, target), [])
            if not rows:
                continue
            rates = [r[0] for r in rows]
            spread = f"{statistics.median(rates):6.0f} ({min(rates):.0f}-{max(rates):.0f})"
            print(f"{backend:9} {_system(target):18} {spread:26} "
                  f"{statistics.median(r[1] for r in rows):7.2f} "
                  f"{statistics.median(r[2] for r in rows):7.2f}")
        for m in res.metrics:
            if m.backend == backend and m.workload.startswith("http_ratio_"):
                vals = ", ".join(f"{v:.2f}" for v in m.values)
                print(f"{backend:9} {m.system} / {m.workload[11:]:8} median {m.median:.2f}x "
                      f"(per repetition: {vals})")


if __name__ == "__main__":
    main()
