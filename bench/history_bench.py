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
import _history_seed as seed

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
    """PostgreSQL only (the prune and WAL sections)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode() if params is None else sql, params)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


def _q(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Either backend, ``%s`` parameters, autocommitted."""
    db = seed.Conn(url)
    try:
        if db.sqlite:
            return list(db.conn.execute(sql.replace("%s", "?"), params).fetchall())
        cur = db.conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []
    finally:
        db.close()


def _templates(url: str) -> list[str]:
    """One real finished no-op run and one 3-step run (drained by a worker); their ids."""
    ids = []
    for task in (t.noop, t.three_steps):
        _, before = drain(url, task, 1)
        ids.append(str(_q(url, "SELECT id FROM runs WHERE id > %s", before)[0][0]))
    return ids


def make_history(url: str, n: int, templates: list[str], age_days: float = 40.0) -> None:
    """n finished runs (seed.seed: copies of the templates, in turn, with their journal
    and events), finished age_days ago and spread over n * 5 ms, with ids older than any
    new run's."""
    then = time.time() - age_days * 86400
    t0 = time.monotonic()
    seed.seed(url, n, templates, then, "run_")
    print(f"  made {n:,} finished runs in {time.monotonic() - t0:.0f} s", flush=True)


def keep_forever(url: str) -> None:
    from outlast.store import open_store

    store = open_store(url)
    store.set_retention_policy(ob.ENV, None, None)
    store.close()


def vacuum(url: str, table: str = "") -> None:
    if url.startswith("sqlite:"):
        _q(url, "ANALYZE")
    else:
        _sql(url, f"VACUUM ANALYZE {table}".strip())


def total_bytes(url: str) -> int:
    if url.startswith("sqlite:"):
        return int(_q(url, "SELECT page_count * page_size FROM pragma_page_count(), "
                      "pragma_page_size()")[0][0])
    return int(_sql(url, """
        SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r'""")[0][0])


def relation_bytes(url: str) -> dict[str, tuple[str, int]]:
    """PostgreSQL: every table's heap (with TOAST) and every index, in bytes."""
    return {str(r[0]): (str(r[1]), int(r[2])) for r in _sql(url, """
        SELECT c.relname, c.relkind, CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid)
               ELSE pg_table_size(c.oid) END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')""")}


def drain(url: str, task: Any, n: int) -> tuple[float, str]:
    """Trigger n runs of a task and drain them with one worker (concurrency 10); runs/s
    from the first start to the last finish, and the newest run id before them."""
    before = str(_q(url, "SELECT COALESCE(MAX(id), '') FROM runs")[0][0])
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


def forget(url: str, before: str) -> None:
    """Delete the runs made after ``before`` (and their rows), so each database keeps
    the history it started with; vacuumed on PostgreSQL."""
    for table in ("run_events", "journal", "run_tags", "waitpoints"):
        _q(url, f"DELETE FROM {table} WHERE run_id > %s", before)
    _q(url, "DELETE FROM runs WHERE id > %s", before)
    if not url.startswith("sqlite:"):
        vacuum(url, "runs, journal, run_events, waitpoints")


def _measure(url: str, workload: str, args: argparse.Namespace) -> float:
    """One figure of a workload on a database, which is left as it was."""
    before = str(_q(url, "SELECT COALESCE(MAX(id), '') FROM runs")[0][0])
    try:
        if workload == "drain":
            return drain(url, t.noop, args.n)[0]
        if workload == "steps":
            return drain(url, t.three_steps, args.n_steps)[0]
        return c.percentile(_probe(url, args.samples, warm=5), 50)
    finally:
        forget(url, before)


WORKLOADS = {  # workload -> (metric, unit, what)
    "drain": ("history_drain", "runs/s", "no-op runs drained, N={n:,}, concurrency 10"),
    "steps": ("history_steps", "runs/s", "3-step runs drained, N={n_steps:,}, concurrency 10"),
    "latency": ("history_start_p50", "ms", "trigger→start p50, {samples} runs one at a time"),
}


def bench_history(args: argparse.Namespace, res: c.Results) -> None:
    for backend in args.backends:
        with c.fresh_database(backend, args.db_prefix) as empty, \
                c.fresh_database(backend, args.db_prefix) as fresh:
            reuse = backend == "sqlite" and args.reuse_sqlite
            full = f"sqlite:///{args.reuse_sqlite}" if reuse else fresh
            bench_history_on(backend, empty, full, args, res, seeded=bool(reuse))


def _reused(url: str) -> None:
    """A history database made by an earlier run of this bench (--reuse-sqlite): migrated
    to this code, and rid of every run younger than its history (the runs of a drain
    that run was stopped in)."""
    ob._migrate(url)
    cutoff = time.time() - 86400
    recent = "SELECT id FROM runs WHERE created_at > %s"
    for table in ("run_events", "journal", "run_tags", "waitpoints"):
        _q(url, f"DELETE FROM {table} WHERE run_id IN ({recent})", cutoff)
    _q(url, "DELETE FROM runs WHERE created_at > %s", cutoff)
    _q(url, "PRAGMA wal_checkpoint(TRUNCATE)")


def bench_history_on(backend: str, empty: str, full: str, args: argparse.Namespace,
                     res: c.Results, seeded: bool = False) -> None:
    t0 = time.monotonic()
    if seeded:
        print(f"{backend}: reusing the history in {full}", flush=True)
        _reused(full)
    for url in (empty, full):
        ob._migrate(url)
        keep_forever(url)  # the figures measure history, not pruning (see prune)
    if not seeded:
        print(f"{backend}: seeding {args.history:,} runs", flush=True)
        make_history(full, args.history, _templates(full))
    _templates(empty)
    vacuum(full)
    vacuum(empty)
    took = time.monotonic() - t0
    how = "reused from an earlier run, migrated" if seeded else "seeded"
    per_run = (total_bytes(full) - total_bytes(empty)) / args.history
    res.record(backend, "history_bytes_per_run", "bytes", per_run, higher_is_better=False,
               note=f"every table and index after VACUUM (SQLite: the file, not vacuumed), "
                    f"{args.history:,} finished runs, half no-op, half 3-step with 3 journal "
                    f"rows; {how} and vacuumed in {took:.0f} s")
    for rep in range(args.reps):
        for workload in args.workloads:
            metric, unit, what = WORKLOADS[workload]
            order = [("empty", empty), ("full", full)]
            if rep % 2:
                order.reverse()  # alternate which goes first
            got: dict[str, float] = {}
            for label, url in order:
                got[label] = _measure(url, workload, args)
                print(f"  {backend} {workload} {label}: {got[label]:.2f} {unit}", flush=True)
                where = ("empty database" if label == "empty"
                         else f"{args.history:,} finished runs in the tables")
                res.record(backend, f"{metric}_{label}", unit, got[label],
                           higher_is_better=unit != "ms",
                           note=what.format(**vars(args)) + f"; {where}")
            ratio = got["full"] / got["empty"]
            if unit == "ms":
                ratio = 1 / ratio  # >1 would mean faster with history, as for rates
            res.record(backend, f"{metric}_ratio", "x", ratio,
                       note="with history / empty, per alternating pair (latency: empty / "
                            "with history), so 1 is no decay and lower is worse")
            res.save(c.RESULTS_DIR / args.out)
    if "prune" in args.only_list and backend == "postgres":
        bench_prune(full, args, res)


def bench_bytes(args: argparse.Namespace, res: c.Results) -> None:
    """PostgreSQL: bytes per finished no-op run, per table and index, after VACUUM."""
    with c.fresh_database("postgres", args.db_prefix) as url:
        ob._migrate(url)
        keep_forever(url)
        noop = _templates(url)[0]
        vacuum(url)
        before = relation_bytes(url)
        make_history(url, args.bytes_runs, [noop])
        vacuum(url)
        after = relation_bytes(url)
    n = args.bytes_runs
    total = 0.0
    print(f"bytes per finished no-op run ({n:,} runs, after VACUUM):")
    for name, (kind, size) in sorted(after.items(), key=lambda kv: -kv[1][1]):
        per = (size - before.get(name, (kind, 0))[1]) / n
        total += per
        if per >= 0.5:
            print(f"  {'index' if kind == 'i' else 'table'} {name}: {per:.1f}")
            res.record(BACKEND, f"bytes_{name}", "bytes", per, higher_is_better=False,
                       note=f"{'index' if kind == 'i' else 'heap + TOAST'}, per run")
    print(f"  total: {total:.1f}")
    res.record(BACKEND, "bytes_per_noop_run", "bytes", total, higher_is_better=False,
               note=f"heap + TOAST + indexes of every table, after VACUUM, {n:,} finished "
                    "no-op runs (copies of one drained by a worker)")


# -- claims during a prune ------------------------------------------------------------------


def _probe(url: str, samples: int, warm: int = 0) -> list[float]:
    """trigger→start (ms) of one run at a time with one worker running (the first
    ``warm`` runs not counted), measured as bench_latency and Celery's bench do: the wall
    clock before the trigger call to the first line of the body (``bench-stamp``'s
    output). Not the runs' created_at→started_at: a run handed to an idle worker in the
    trigger's commit is written started (execution-model.md), so those two are equal."""
    client = Client(url, env=ob.ENV)
    db = ob.Db(url)
    sent: list[tuple[float, str]] = []
    try:
        with ob.worker(url, 10) as proc:
            ob.wait_registered(db, proc.pid)
            for i in range(samples + warm):
                t_sent = time.time()
                h = client.trigger(t.stamp, i)
                c.wait_until(lambda h=h: db.one("SELECT status FROM runs WHERE id = %s",
                                                h.id)[0] == "COMPLETED", 30.0, 0.002, "run")
                if i >= warm:
                    sent.append((t_sent, h.id))
                time.sleep(0.01)
        bodies = [float(client.retrieve(i).output) for _, i in sent]
    finally:
        client.close()
        db.close()
    return [(b - s) * 1000 for (s, _), b in zip(sent, bodies, strict=True)]


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
    p.add_argument("--n-steps", type=int, default=2_000, help="3-step runs per drain")
    p.add_argument("--bytes-runs", type=int, default=200_000,
                   help="no-op runs made for the per-table and per-index bytes")
    p.add_argument("--backend", default="both", help="postgres, sqlite or both (history)")
    p.add_argument("--workloads", default="drain,steps,latency",
                   help="history: drain, steps, latency (alternating empty and full)")
    p.add_argument("--reuse-sqlite", default="",
                   help="a SQLite file holding --history runs made by an earlier run (kept)")
    p.add_argument("--db-prefix", default="outlast_history",
                   help="prefix of the databases made (dropped afterwards)")
    p.add_argument("--only", default="bytes,history,prune,wal",
                   help="bytes, history, prune, wal")
    p.add_argument("--no-report", action="store_true", help="do not rebuild RESULTS.md")
    p.add_argument("--out", default="history.json", help="results file in bench/results/")
    p.add_argument("--src", default="worktree", help="outlast to measure (see outlast_bench)")
    args = p.parse_args(argv)
    args.only_list = [w.strip() for w in args.only.split(",") if w.strip()]
    args.backends = ["postgres", "sqlite"] if args.backend == "both" else [args.backend]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/history_bench.py",
                                                 *(sys.argv[1:] if argv is None else argv)])
    versions, settings = ob.versions_and_settings(["postgres", "sqlite"])
    res = c.Results("outlast", command, c.now_iso(), versions, settings)
    path = c.RESULTS_DIR / args.out
    if "bytes" in args.only_list:
        bench_bytes(args, res)
        res.save(path)
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
