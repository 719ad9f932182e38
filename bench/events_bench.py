"""Events against triggers, in the same sitting, alternating A/B on fresh databases.

    .venv/bin/python bench/events_bench.py [--events N] [--reps R] [--backend sqlite|postgres|both]

Per repetition and backend (each on a fresh database, 3 subscribed tasks published):
  bulk trigger   batch_trigger of 3xN runs in chunks of 1,000 (the reference runs/s)
  bulk publish   publish_many of N events in batches of 1,000/3 events, 3 subscribers each:
                 runs created per second (target: >= 0.8x bulk trigger's runs/s)
  single         median latency of Client.trigger (one run) and of Client.publish of
                 `bench.one` (two subscribers: two runs), interleaved one for one (target:
                 publish <= 1.5x trigger); beside it, a publish of `solo.one`, whose one
                 subscriber makes one run (the trigger's work plus the event), interleaved
                 with them
Prints medians; writes nothing under bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

SRC, SRC_DESC = c.outlast_source(c.source_from_argv(sys.argv[1:]))
sys.path.insert(0, str(SRC))

from outlast import task  # noqa: E402
from outlast.client import Client  # noqa: E402
from outlast.store import open_store  # noqa: E402

ENV = "bench"
CHUNK = 1000


@task(id="bench-ev-a", on=["bench.*"])
async def sub_a(payload: Any) -> None: ...


@task(id="bench-ev-b", on=["bench.signup"])
async def sub_b(payload: Any) -> None: ...


@task(id="bench-ev-c", on=["bench.signup"])
async def sub_c(payload: Any) -> None: ...


@task(id="bench-ev-filtered", on=["bench.filtered"], if_="event.data.n >= 0")
async def sub_filtered(payload: Any) -> None: ...


@task(id="bench-ev-one", on=["bench.one"])
async def sub_one(payload: Any) -> None: ...


@task(id="bench-ev-solo", on=["solo.one"])
async def sub_solo(payload: Any) -> None: ...


@task(id="bench-ev-plain")
async def plain(payload: Any) -> None: ...


def _client(url: str) -> Client:
    store = open_store(url)
    store.migrate()
    subscribers = (sub_a, sub_b, sub_c, sub_one, sub_filtered, sub_solo, plain)
    store.publish_tasks(ENV, [t.definition() for t in subscribers])
    client = Client(store=store, env=ENV)
    client.trigger(plain, -1)  # warm-up: schema check, connections, queue rows
    client.publish("bench.one", -1)
    client.publish("bench.signup", {"n": -1})
    client.publish("solo.one", {"n": -1})
    return client


def bulk_trigger(url: str, n_runs: int) -> float:
    client = _client(url)
    t0 = time.perf_counter()
    for i in range(0, n_runs, CHUNK):
        client.batch_trigger(plain, [{"n": j} for j in range(i, min(n_runs, i + CHUNK))])
    rate = n_runs / (time.perf_counter() - t0)
    client.close()
    return rate


def bulk_publish(url: str, n_events: int) -> float:
    client = _client(url)
    per = CHUNK // 3
    t0 = time.perf_counter()
    for i in range(0, n_events, per):
        client.publish_many([{"name": "bench.signup", "data": {"n": j}, "id": f"e{j}"}
                             for j in range(i, min(n_events, i + per))])
    rate = 3 * n_events / (time.perf_counter() - t0)
    client.close()
    return rate


def singles(url: str, n: int) -> tuple[float, float, float]:
    """Median ms of a single trigger, a publish to two subscribers, and to one."""
    client = _client(url)
    trig: list[float] = []
    pub: list[float] = []
    solo: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        client.trigger(plain, {"n": i})
        trig.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.publish("bench.one", {"n": i})
        pub.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.publish("solo.one", {"n": i})
        solo.append(time.perf_counter() - t0)
    client.close()
    def ms(xs: list[float]) -> float:
        return statistics.median(xs) * 1000

    return ms(trig), ms(pub), ms(solo)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--singles", type=int, default=300)
    p.add_argument("--backend", default="both", choices=("sqlite", "postgres", "both"))
    p.add_argument("--src", default="worktree")
    args = p.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"outlast: {SRC_DESC}")
    for backend in backends:
        trig: list[float] = []
        pub: list[float] = []
        lat: list[tuple[float, float, float]] = []
        for _ in range(args.reps):  # A, B, A, B…: drift on a shared machine hits both
            with c.fresh_database(backend, "outlast_ev_bench") as url:
                trig.append(bulk_trigger(url, 3 * args.events))
            with c.fresh_database(backend, "outlast_ev_bench") as url:
                pub.append(bulk_publish(url, args.events))
            with c.fresh_database(backend, "outlast_ev_bench") as url:
                lat.append(singles(url, args.singles))
        t, pb = statistics.median(trig), statistics.median(pub)
        lt = statistics.median(x[0] for x in lat)
        lp = statistics.median(x[1] for x in lat)
        ls = statistics.median(x[2] for x in lat)
        print(f"{backend}: bulk trigger {t:,.0f} runs/s; bulk publish {pb:,.0f} runs/s "
              f"({args.events:,} events x 3 subscribers) = {pb / t:.2f}x trigger; "
              f"single trigger {lt:.2f} ms, single publish {lp:.2f} ms = {lp / lt:.2f}x "
              f"(2 runs; to one subscriber: {ls:.2f} ms = {ls / lt:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
