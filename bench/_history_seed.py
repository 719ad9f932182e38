"""Finished runs made with SQL, fast, on either backend: copies of real finished runs (one
no-op run and one 3-step run with its three journal rows, both drained by a worker), with
new ids, payloads and times. Used by history_bench.py.

PostgreSQL: ``INSERT … SELECT`` over ``generate_series``; SQLite: over a recursive CTE;
both in chunks of a million rows, one transaction each. Every column of the template is
copied as it is except the id, the payload and the times, so a column added by a later
migration is copied too. The usage rollup's watermark is moved past the history, as on a
production database whose scheduler has kept up (otherwise the worker under test would
spend the drain rolling up millions of runs).
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

from outlast import _ids

CHUNK = 1_000_000
TIMES = ("created_at", "updated_at", "available_at", "ready_at", "started_at",
         "finished_at", "segment_started_at")


class Conn:
    """One autocommitting connection; SQL written with ``:name`` parameters."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite:")
        self.conn: Any
        if self.sqlite:
            self.conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60.0,
                                        isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
        else:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        if not self.sqlite:
            sql = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql.replace("%", "%%"))
        cur = self.conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []

    def columns(self, table: str) -> list[str]:
        if self.sqlite:
            return [r[1] for r in self.rows(f"PRAGMA table_info({table})")]
        return [r[0] for r in self.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
            "AND table_schema = 'public' ORDER BY ordinal_position", t=table)]

    def close(self) -> None:
        self.conn.close()


def _series(db: Conn) -> tuple[str, str]:
    """(a WITH clause or '', a FROM item) giving ``g.x`` over :lo..:hi."""
    if db.sqlite:
        return ("WITH RECURSIVE g(x) AS (SELECT :lo UNION ALL SELECT x + 1 FROM g "
                "WHERE x < :hi) ", "g")
    return "", "generate_series(CAST(:lo AS BIGINT), CAST(:hi AS BIGINT)) AS g(x)"


def _pad(db: Conn) -> str:
    return "printf('%016d', g.x)" if db.sqlite else "lpad(g.x::text, 16, '0')"


def _time_digits(db: Conn) -> str:
    """The 10 base32 digits of run i's creation millisecond, as outlast._ids writes them,
    so ids differ where real ones do (an index keyed on an id's prefix sees one key a
    millisecond, not one for the whole history)."""
    ms = "CAST((:then + g.x * :step) * 1000 AS BIGINT)"
    alphabet = "'0123456789abcdefghjkmnpqrstvwxyz'"
    return " || ".join(f"substr({alphabet}, CAST((({ms} >> {5 * k}) & 31) + 1 AS INTEGER), 1)"
                       for k in range(9, -1, -1))


def seed(url: str, n: int, templates: list[str], then: float, prefix: str,
         step: float = 0.005) -> None:
    """n finished runs: run i (1-based) copies templates[i % len(templates)], with id
    prefix ("run_"), the base32 millisecond of its creation and i padded to 16 digits,
    created ``then + i * step``."""
    db = Conn(url)
    try:
        if not db.sqlite:
            db.rows("SET synchronous_commit = off")
        cols = db.columns("runs")
        jcols = db.columns("journal")
        ecols = [c for c in db.columns("run_events") if c != "id"]
        new_id = f":prefix || {_time_digits(db)} || {_pad(db)}"
        t0 = time.monotonic()
        for lo in range(1, n + 1, CHUNK):
            hi = min(n, lo + CHUNK - 1)
            for k, template in enumerate(templates):
                _copy(db, cols, jcols, ecols, new_id, template, k, len(templates),
                      {"lo": lo, "hi": hi, "prefix": prefix, "then": then, "step": step})
            print(f"  {hi:,} runs ({time.monotonic() - t0:.0f} s)", flush=True)
        # The newest copy: ids of runs made after the history (the templates) are newer.
        bound = prefix + _ids._time_digits(int((then + n * step + 1.0) * 1000)) + "z"
        last = db.rows("SELECT finished_at, id FROM runs WHERE id LIKE :p AND id < :bound "
                       "ORDER BY id DESC LIMIT 1", p=prefix + "%", bound=bound)[0]
        db.rows("UPDATE usage_state SET finished_at = :f, run_id = :r WHERE name = 'rollup'",
                f=last[0], r=last[1])
    finally:
        db.close()


def _copy(db: Conn, cols: list[str], jcols: list[str], ecols: list[str], new_id: str,
          template: str, k: int, m: int, params: dict[str, Any]) -> None:
    with_, series = _series(db)
    params = {**params, "template": template, "k": k, "m": m}
    at = "(:then + g.x * :step)"
    offsets = {"created_at": "", "available_at": "", "ready_at": "",
               "started_at": " + 0.002", "segment_started_at": " + 0.002",
               "finished_at": " + 0.004", "updated_at": " + 0.004"}
    exprs = []
    for c in cols:
        if c == "id":
            exprs.append(new_id)
        elif c == "payload":
            exprs.append("CAST(g.x AS TEXT)")
        elif c == "root_id":
            exprs.append(f"CASE WHEN t.root_id = t.id THEN {new_id} ELSE t.root_id END")
        elif c in offsets:
            exprs.append(f"CASE WHEN t.{c} IS NULL THEN NULL ELSE {at}{offsets[c]} END")
        else:
            exprs.append(f"t.{c}")
    only = "(g.x % :m) = :k"
    db.rows(f"{with_}INSERT INTO runs ({', '.join(cols)}) SELECT {', '.join(exprs)} "
            f"FROM runs t, {series} WHERE t.id = :template AND {only}", **params)
    jexprs = [new_id if c == "run_id" else f"j.{c}" for c in jcols]
    db.rows(f"{with_}INSERT INTO journal ({', '.join(jcols)}) SELECT {', '.join(jexprs)} "
            f"FROM journal j, {series} WHERE j.run_id = :template AND {only}", **params)
    eexprs = [new_id if c == "run_id" else (at if c == "ts" else f"e.{c}") for c in ecols]
    db.rows(f"{with_}INSERT INTO run_events ({', '.join(ecols)}) SELECT {', '.join(eexprs)} "
            f"FROM run_events e, {series} WHERE e.run_id = :template AND {only}", **params)
