"""Where a PostgreSQL bulk publish's time goes, against a bulk trigger of as many runs.

    .venv/bin/python bench/events_phases.py [--events N] [--pairs P] [--src REV]

One process, fresh databases, alternating trigger and publish P times. Per phase (the
store's methods wrapped): wall time (perf_counter), this process's CPU (process_time)
and the server's (utime + stime of every backend of the database, from /proc/<pid>/stat;
the server must run on this machine). Prints the medians per phase. "plan, COPYs" is
_plan_and_insert: the planning with the events' COPY, and since b99c792 the runs' too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import events_bench as eb  # its tasks and set-up; it reads --src from the command line

_TICK = os.sysconf("SC_CLK_TCK")


def _server_cpu(conn: Any, db: str) -> float:
    total = 0
    for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                               (db,)).fetchall():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


class Phases:
    def __init__(self, admin: Any, db: str) -> None:
        self.admin, self.db = admin, db
        self.acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self.depth = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.depth:  # nested: counted in the outer phase
            yield
            return
        self.depth += 1
        s0, c0, w0 = _server_cpu(self.admin, self.db), time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            w1, c1, s1 = time.perf_counter(), time.process_time(), _server_cpu(self.admin,
                                                                            self.db)
            a = self.acc[name]
            a[0] += w1 - w0
            a[1] += c1 - c0
            a[2] += s1 - s0
            self.depth -= 1


def _wrap(cls: Any, attr: str, phases: Callable[[], Phases | None], name: str) -> None:
    inner = getattr(cls, attr)

    def wrapped(*args: Any, **kw: Any) -> Any:
        ph = phases()
        if ph is None:
            return inner(*args, **kw)
        with ph.phase(name):
            return inner(*args, **kw)

    setattr(cls, attr, wrapped)


CURRENT: list[Phases | None] = [None]


def _instrument() -> None:
    from outlast.store import _pg_tx, _sql_core, _sql_events, _sql_events_pg

    def cur() -> Phases | None:
        return CURRENT[0]

    _wrap(_sql_events_pg.PgEventsMixin, "_lock_and_subscribers", cur, "lock+seqs+waits")
    _wrap(_sql_events_pg.PgEventsMixin, "_plan_and_insert", cur, "plan, COPYs")
    _wrap(_sql_events.EventsMixin, "_flush", cur, "runs COPY")
    _wrap(_sql_core.SqlCore, "_insert_runs", cur, "runs COPY")
    _wrap(_pg_tx._LateBeginTx, "q", cur, "lock+seqs+waits")


def run(kind: str, n_events: int, admin: Any) -> dict[str, list[float]]:
    with c.fresh_database("postgres", "outlast_ev_phases") as url:
        db = url.rsplit("/", 1)[1]
        client = eb._client(url)
        ph = Phases(admin, db)
        per = eb.CHUNK // 3
        CURRENT[0] = ph
        with ph.phase("total"):
            pass
        ph.acc.clear()
        s0, c0, w0 = _server_cpu(admin, db), time.process_time(), time.perf_counter()
        if kind == "trigger":
            for i in range(0, 3 * n_events, eb.CHUNK):
                client.batch_trigger(eb.plain, [{"n": j} for j in
                                                range(i, min(3 * n_events, i + eb.CHUNK))])
        else:
            for i in range(0, n_events, per):
                client.publish_many([{"name": "bench.signup", "data": {"n": j}, "id": f"e{j}"}
                                     for j in range(i, min(n_events, i + per))])
        w1, c1, s1 = time.perf_counter(), time.process_time(), _server_cpu(admin, db)
        CURRENT[0] = None
        client.close()
        out = dict(ph.acc)
        out["total"] = [w1 - w0, c1 - c0, s1 - s0]
        return out


def main(argv: list[str] | None = None) -> int:
    import psycopg

    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--src", default="worktree")
    args = p.parse_args(argv)
    _instrument()
    print(f"outlast: {eb.SRC_DESC}")
    found: dict[str, dict[str, list[list[float]]]] = {"trigger": defaultdict(list),
                                                       "publish": defaultdict(list)}
    with psycopg.connect(c.PG_ADMIN_URL, autocommit=True) as admin:
        for _ in range(args.pairs):
            for kind in ("trigger", "publish"):
                for k, v in run(kind, args.events, admin).items():
                    found[kind][k].append(v)
    for kind, phases in found.items():
        print(f"{kind} ({3 * args.events:,} runs): wall / client CPU / server CPU, seconds,"
              f" median of {args.pairs}")
        for name, vals in phases.items():
            med = [statistics.median(v[i] for v in vals) for i in range(3)]
            print(f"  {name:18} {med[0]:6.3f} {med[1]:6.3f} {med[2]:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
