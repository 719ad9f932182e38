"""Where a fan-out's slot time goes: a profile, not a benchmark of record.

    .venv/bin/python bench/fanout_probe.py [--backend sqlite|postgres] [--m 10000]
                                           [--reps 3] [--burn-us 0] [--loop auto]

Runs the fan-out of outlast_bench.py (a parent's batch_trigger_and_wait of M children on a
queue limited to 10, each child sleeping 20 ms) with the worker in this process, so each
child can time itself. Per repetition it prints:

- % of ideal: M x 20 ms / 10 slots against the span from the first child's start to the
  last child's end;
- the children's own sleep (asyncio.sleep(0.02) as timed around the call) and what is
  left of each slot's round, the idle time per child: the loop's work between a child's
  end and its successor's start;
- the event loop thread's CPU per child, and the commits the worker made.

``--burn-us N`` spins N microseconds in every child after its sleep, on the path from a
child's end to its successor's start. The ten slots run in lock step (their 20 ms timers
come due on the same millisecond tick), so each microsecond there costs about ten per
round: the measurement behind bench/README.md#limits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as c

from outlast import _loop, queue, task
from outlast.client import Client
from outlast.store import open_store
from outlast.worker import Worker

LIMIT = 10
SLEEP = 0.02

_spans: list[tuple[float, float]] = []
_burn = 0.0


@task(id="probe-child", queue=queue("probe-fanout", concurrency_limit=LIMIT))
async def child(payload: int) -> int:
    began = time.perf_counter()
    await asyncio.sleep(SLEEP)
    ended = time.perf_counter()
    _spans.append((began, ended))
    if _burn:
        until = ended + _burn
        while time.perf_counter() < until:
            pass
    return payload


@task(id="probe-parent")
async def parent(m: int) -> int:
    results = await child.batch_trigger_and_wait(list(range(m)))
    return sum(1 for r in results if r.ok)


def one(backend: str, m: int, loop: str) -> dict[str, float]:
    _spans.clear()
    with c.fresh_database(backend, "outlast_probe") as url:
        store = open_store(url)
        store.migrate()
        client = Client(url, env="probe")
        client.trigger(parent, m)
        client.close()
        worker = Worker(
            store, tasks={"probe-child": child, "probe-parent": parent}, env="probe",
            concurrency=20,
        )
        cpu: list[float] = []

        async def main() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            began = time.thread_time()
            while len(_spans) < m:
                await asyncio.sleep(0.05)
            cpu.append(time.thread_time() - began)
            stop.set()
            await running

        _loop.run(main(), loop, join_threads=True)
        store.close()
    first = min(b for b, _ in _spans)
    last = max(e for _, e in _spans)
    span = last - first
    busy = sum(e - b for b, e in _spans)
    return {
        "pct": 100 * m * SLEEP / LIMIT / span,
        "sleep_ms": 1000 * busy / m,
        "idle_ms": 1000 * (LIMIT * span - busy) / m,
        "loop_cpu_us": 1e6 * cpu[0] / m,
        "commits": float(worker.committer.batches),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--m", type=int, default=10_000, help="children")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--burn-us", type=float, default=0.0,
                   help="spin this long in each child after its sleep")
    p.add_argument("--loop", choices=list(_loop.CHOICES), default="auto")
    args = p.parse_args()
    global _burn
    _burn = args.burn_us / 1e6
    rows = []
    for _ in range(args.reps):
        r = one(args.backend, args.m, args.loop)
        rows.append(r)
        print(f"{args.backend} M={args.m} burn {args.burn_us:g} us: {r['pct']:.2f}% of ideal;"
              f" sleep {r['sleep_ms']:.3f} ms, idle {r['idle_ms']:.3f} ms per child;"
              f" loop CPU {r['loop_cpu_us']:.0f} us per child; {r['commits']:.0f} commits",
              flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"median of {args.reps}: {med['pct']:.2f}% of ideal, sleep {med['sleep_ms']:.3f} ms,"
          f" idle {med['idle_ms']:.3f} ms, loop CPU {med['loop_cpu_us']:.0f} us per child")


if __name__ == "__main__":
    main()
