"""Throughput with history, bytes per finished run, writes and WAL per run, and claims
during a big prune, on PostgreSQL. Prints figures; never a timed test.

    .venv/bin/python bench/history_bench.py [--history 1000000] [--n 10000] [--reps 3]
        [--only history,wal,prune] [--src REV|PATH] [--no-report]

history: two databases, one empty and one holding --history finished no-op runs made
    with SQL (copies of a real finished run, with its events; not run by a worker), both
    VACUUMed; --n no-op runs drained by one worker, alternating between the two, --reps
    times. The drained runs are deleted (and the table vacuumed) after each drain, so the
    empty database stays empty. Bytes per finished run: every table and index of the
    history database after VACUUM minus the empty one's, over --history.
wal: on a private cluster (initdb on a free port, default settings, so no other session's
    writes are counted): WAL bytes (pg_current_wal_lsn), WAL records and full-page
    images (pg_stat_wal) and rows written (pg_stat_database: inserted + updated +
    deleted) per run, triggered and drained, for a no-op task and a 3-step task.
prune: the history database with its runs expired: prune them in batches of 500 while a
    probe triggers one run at a time and measures trigger→start; the same probe without a
    prune before it; the prune rate.

Results go to bench/results/history.json (bench/RESULTS.md is rebuilt from results/).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

SRC, SRC_DESC = c.outlast_source(c.source_from_argv(sys.argv[1:]))
sys.path.insert(0, str(SRC))

import _report  # noqa: E402
import outlast_bench as ob  # noqa: E402
import outlast_tasks as t  # noqa: E402
import psycopg  # noqa: E402

from outlast.client import Client  # noqa: E402

BACKEND = "postgres"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# -- making history ---------------------------------------------------------------------


def _sql(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode() if params is None else sql, params)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


def _template(url: str) -> str:
    """One real finished no-op run (drained by a worker); its id."""
    drain(url, t.noop, 1)
    return str(_sql(url, "SELECT id FROM runs WHERE status = 'COMPLETED' LIMIT 1")[0][0])


def make_history(url: str, n: int, age_days: float = 40.0) -> None:
    """n copies of a finished no-op run (and its events), finished age_days ago and
    spread over a day, with ids older than any new run's. (LATERAL: ``(f(x)).*`` would
    call f once per column.)"""
    started = time.monotonic()
    template = _template(url)
    print(f"  template run drained ({time.monotonic() - started:.0f} s)", flush=True)
    then = time.time() - age_days * 86400
    ms = int(then * 1000)
    from outlast._ids import _time_digits

    prefix = "run_" + _time_digits(ms)
    t0 = time.monotonic()
    chunk = 200_000
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        _sql(url, """
            WITH t AS MATERIALIZED (SELECT * FROM runs WHERE id = %(template)s)
            INSERT INTO runs
            SELECT r.* FROM t, generate_series(%(lo)s::int, %(hi)s::int) g,
            LATERAL jsonb_populate_record(NULL::runs, to_jsonb(t) || jsonb_build_object(
                'id', %(prefix)s || lpad(g::text, 16, '0'),
                'payload', g::text,
                'created_at', %(then)s::float8 + g * 0.05,
                'updated_at', %(then)s::float8 + g * 0.05 + 0.01,
                'available_at', %(then)s::float8 + g * 0.05,
                'ready_at', %(then)s::float8 + g * 0.05,
                'started_at', %(then)s::float8 + g * 0.05 + 0.002,
                'finished_at', %(then)s::float8 + g * 0.05 + 0.004)) r
        """, {"prefix": prefix, "then": then, "lo": start + 1, "hi": start + count,
              "template": template})
        _sql(url, """
            WITH e AS MATERIALIZED (SELECT * FROM run_events WHERE run_id = %(template)s)
            INSERT INTO run_events (run_id, ts, kind, attempt, level, message, data)
            SELECT %(prefix)s || lpad(g::text, 16, '0'), %(then)s::float8 + g * 0.05, e.kind,
                   e.attempt, e.level, e.message, e.data
            FROM e, generate_series(%(lo)s::int, %(hi)s::int) g
        """, {"prefix": prefix, "then": then, "lo": start + 1, "hi": start + count,
              "template": template})
        _sql(url, """
            WITH j AS MATERIALIZED (SELECT * FROM journal WHERE run_id = %(template)s)
            INSERT INTO journal
            SELECT r.* FROM j, generate_series(%(lo)s::int, %(hi)s::int) g,
            LATERAL jsonb_populate_record(NULL::journal, to_jsonb(j) || jsonb_build_object(
                'run_id', %(prefix)s || lpad(g::text, 16, '0'))) r
        """, {"prefix": prefix, "lo": start + 1, "hi": start + count, "template": template})
        print(f"  {start + count:,} runs", flush=True)
    print(f"  made {n:,} finished runs in {time.monotonic() - t0:.0f} s", flush=True)


def keep_forever(url: str) -> None:
    from outlast.store import open_store

    store = open_store(url)
    store.set_retention_policy(ob.ENV, None, None)
    store.close()


def vacuum(url: str, table: str = "") -> None:
    _sql(url, f"VACUUM ANALYZE {table}".strip())


def total_bytes(url: str) -> int:
    return int(_sql(url, """
        SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r'""")[0][0])


def drain(url: str, task: Any, n: int) -> tuple[float, str]:
    """Trigger n runs of a task and drain them with one worker (concurrency 10); runs/s
    from the first start to the last finish, and the newest run id before them."""
    before = str(_sql(url, "SELECT COALESCE(MAX(id), '') FROM runs")[0][0])
    client = Client(url, env=ob.ENV)
    ob.enqueue(client, task, list(range(n)))
    client.close()
    db = ob.Db(url)
    try:
        with ob.worker(url, 10) as proc:
            def drained() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited; logs in {ob.LOGS}")
                return int(db.one("SELECT COUNT(*) FROM runs WHERE id > %s AND "
                                  "status = 'COMPLETED'", before)[0]) >= n
            c.wait_until(drained, 60 + n / 20, 0.2, f"{n} runs drained")
        first, last = db.one("SELECT MIN(started_at), MAX(finished_at) FROM runs "
                             "WHERE id > %s", before)
    finally:
        db.close()
    return n / (float(last) - float(first)), before


def drain_and_forget(url: str, n: int) -> float:
    """Drain n no-op runs; runs/s. The drained runs are deleted after, and vacuumed."""
    rate, before = drain(url, t.noop, n)
    _sql(url, "DELETE FROM run_events WHERE run_id > %(b)s", {"b": before})
    _sql(url, "DELETE FROM journal WHERE run_id > %(b)s", {"b": before})
    _sql(url, "DELETE FROM runs WHERE id > %(b)s", {"b": before})
    vacuum(url)
    return rate


def bench_history(args: argparse.Namespace, res: c.Results) -> None:
    with ob.database(BACKEND) as empty, ob.database(BACKEND) as full:
        make_history(full, args.history)
        _template(empty)
        for url in (empty, full):  # the drains measure history, not pruning (see --prune)
            keep_forever(url)
        vacuum(full)
        vacuum(empty)
        per_run = (total_bytes(full) - total_bytes(empty)) / args.history
        res.record(BACKEND, "history_bytes_per_run", "bytes", per_run, higher_is_better=False,
                   note=f"heap + indexes + TOAST of every table, after VACUUM, "
                        f"{args.history:,} finished no-op runs")
        empties: list[float] = []
        fulls: list[float] = []
        for rep in range(args.reps):
            order = [("empty", empty), ("full", full)]
            if rep % 2:
                order.reverse()  # alternate which goes first
            for label, url in order:
                rate = drain_and_forget(url, args.n)
                (empties if label == "empty" else fulls).append(rate)
                res.record(BACKEND, f"history_drain_{label}", "runs/s", rate,
                           note=f"N={args.n:,}, concurrency 10; "
                                + ("empty database" if label == "empty"
                                   else f"{args.history:,} finished runs in the tables"))
        for e, f in zip(empties, fulls, strict=True):
            res.record(BACKEND, "history_ratio", "x", f / e,
                       note="drain with history / drain on an empty database, per pair")
        if "prune" in args.only_list:
            bench_prune(full, args, res)


# -- claims during a prune ------------------------------------------------------------------


def _probe(url: str, samples: int) -> list[float]:
    """trigger→start (ms) of one run at a time with one worker running."""
    client = Client(url, env=ob.ENV)
    db = ob.Db(url)
    ids: list[str] = []
    try:
        with ob.worker(url, 10) as proc:
            ob.wait_registered(db, proc.pid)
            for i in range(samples):
                h = client.trigger(t.noop, i)
                c.wait_until(lambda h=h: db.one("SELECT status FROM runs WHERE id = %s",
                                                h.id)[0] == "COMPLETED", 30.0, 0.002, "run")
                ids.append(h.id)
                time.sleep(0.01)
        rows = [db.one("SELECT created_at, started_at FROM runs WHERE id = %s", i)
                for i in ids]
    finally:
        client.close()
        db.close()
    return [(s - cr) * 1000 for cr, s in rows]


def bench_prune(url: str, args: argparse.Namespace, res: c.Results) -> None:
    from outlast._retention import prune
    from outlast.store import open_store

    quiet = _probe(url, args.samples)
    store = open_store(url)
    store.set_retention_policy(ob.ENV, None, 30)  # the history finished 40 days ago
    done: dict[str, float] = {}

    def pruning() -> None:
        before = int(_sql(url, "SELECT COUNT(*) FROM runs")[0][0])
        t0 = time.monotonic()
        prune(store, env=ob.ENV, batch=500)
        done["seconds"] = time.monotonic() - t0
        # The probe's worker prunes too (its scheduler), in disjoint batches: count all.
        done["runs"] = before - int(_sql(url, "SELECT COUNT(*) FROM runs")[0][0])

    thread = threading.Thread(target=pruning)
    thread.start()
    busy: list[float] = []
    while thread.is_alive():
        busy += _probe(url, 50)
    thread.join()
    store.close()
    res.record(BACKEND, "prune_rate", "runs/s", done["runs"] / done["seconds"],
               note=f"{done['runs']:,} finished runs, batches of 500, a pruning thread "
                    "and the probe worker's scheduler")
    for label, values in (("quiet", quiet), ("pruning", busy)):
        for p in (50, 99):
            res.record(BACKEND, f"prune_start_{label}_p{p}", "ms", c.percentile(values, p),
                       higher_is_better=False,
                       note=f"trigger→start, {len(values)} samples, one run at a time")


# -- writes and WAL per run --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_cluster() -> Iterator[str]:
    """A PostgreSQL cluster of our own with default settings (WAL counted here is ours);
    its admin URL. Stopped and removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="outlast-wal-", dir="/tmp"))
    shutil.chown(tmp, "postgres")
    data, port = tmp / "data", _free_port()

    def as_pg(*argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    as_pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
          "-E", "UTF8", "--no-sync")
    as_pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-o",
          f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        as_pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


def _counters(url: str) -> tuple[int, int, int, int]:
    """(WAL LSN, WAL records, full-page images, rows written in this database)."""
    _sql(url, "SELECT pg_stat_force_next_flush()")
    time.sleep(1.2)  # statistics reach the shared view at most once a second
    lsn, records, fpi = _sql(url, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, wal_records, "
                             "wal_fpi FROM pg_stat_wal")[0]
    rows = _sql(url, "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                "WHERE datname = current_database()")[0][0]
    return int(lsn), int(records), int(fpi), int(rows)


def bench_wal(args: argparse.Namespace, res: c.Results) -> None:
    with private_cluster() as admin:
        for task, label in ((t.noop, "noop"), (t.three_steps, "steps")):
            name = f"wal_{label}_{os.getpid()}"
            _sql(admin, f"CREATE DATABASE {name}")
            url = c.pg_url(name, admin)
            ob._migrate(url)
            drain(url, task, 200)  # warm: queue and slot rows, task definitions
            _sql(url, "CHECKPOINT")
            before = _counters(url)
            drain(url, task, args.wal_runs)
            after = _counters(url)
            n = args.wal_runs
            wal, recs, fpi, rows = (a - b for a, b in zip(after, before, strict=True))
            what = "no-op" if label == "noop" else "3-step"
            note = f"{n:,} {what} runs triggered in batches of 1,000 and drained, concurrency 10"
            res.record(BACKEND, f"wal_bytes_{label}", "bytes/run", wal / n,
                       higher_is_better=False, note=note + "; after a CHECKPOINT")
            res.record(BACKEND, f"wal_records_{label}", "records/run", recs / n,
                       higher_is_better=False, note=note + f"; {fpi / n:.2f} full-page images/run")
            res.record(BACKEND, f"rows_written_{label}", "rows/run", rows / n,
                       higher_is_better=False, note=note + "; inserted + updated + deleted")


# -- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--history", type=int, default=1_000_000, help="finished runs made by SQL")
    p.add_argument("--n", type=int, default=10_000, help="runs per drain")
    p.add_argument("--reps", type=int, default=3, help="drain pairs (alternating)")
    p.add_argument("--samples", type=int, default=200, help="latency samples with no prune")
    p.add_argument("--wal-runs", type=int, default=5_000, help="runs per WAL figure")
    p.add_argument("--only", default="history,prune,wal", help="history, prune, wal")
    p.add_argument("--no-report", action="store_true", help="do not rebuild RESULTS.md")
    p.add_argument("--out", default="history.json", help="results file in bench/results/")
    p.add_argument("--src", default="worktree", help="outlast to measure (see outlast_bench)")
    args = p.parse_args(argv)
    args.only_list = [w.strip() for w in args.only.split(",") if w.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/history_bench.py",
                                                 *(sys.argv[1:] if argv is None else argv)])
    versions, settings = ob.versions_and_settings([BACKEND])
    res = c.Results("outlast", command, c.now_iso(), versions, settings)
    path = c.RESULTS_DIR / args.out
    if "history" in args.only_list:
        bench_history(args, res)
        res.save(path)
    if "wal" in args.only_list:
        bench_wal(args, res)
        res.save(path)
    res.save(path)
    if not args.no_report:
        print(f"wrote {_report.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
