"""Rows to records, and the pieces every part of the SQL store shares: the query file,
the schema files, the transaction protocol."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Protocol

from .._serde import dumps, loads
from ..runs import FINAL_STATUSES, JournalEntry, Run, RunStatus
from .base import (
    TaskDef,
    Waitpoint,
)

# A start stays in its queue's rate window this fraction of the period longer than the
# period itself. The limit is judged at claim time; the delay between a claim and the
# task's first line (another process, a busy CPU) varies by milliseconds, and must not
# let the task code, or the API it calls, see N+1 starts within one period.
RATE_GUARD = 0.05
_FINAL = tuple(str(s) for s in FINAL_STATUSES)

Row = dict[str, Any]

_KNOWN_STATUSES = frozenset(s.value for s in RunStatus)


def status_clause(statuses: Sequence[str], params: dict[str, Any], col: str = "r.status") -> str:
    """``col IN (...)`` for a filter on run statuses. Known statuses are constants and go
    into the SQL as literals (anything else is a bound parameter, and matches no run), so
    the planner can use the partial index runs_env_status_live, which holds every run but
    a COMPLETED one (finished runs are nearly all COMPLETED: they leave it). SQLite uses a
    partial index only when the query carries its predicate word for word, so the clause
    says it whenever COMPLETED is not asked for; a filter on COMPLETED goes by
    runs_env_idp, where the newest runs are nearly all COMPLETED."""
    names = []
    for i, s in enumerate(statuses):
        if str(s) in _KNOWN_STATUSES:
            names.append(f"'{s}'")
        else:
            params[f"status{i}"] = str(s)
            names.append(f":status{i}")
    clause = f"{col} IN ({', '.join(names)})"
    if "COMPLETED" not in {str(s) for s in statuses}:
        clause += f" AND {col} <> 'COMPLETED'"
    return clause


# Runs listed by environment (and task) in id order go by runs_env_idp (env,
# substr(id, 5, 12)) and runs_env_task_idp (env, task_id, substr(id, 5, 12)) (migration
# 0023_runs_list_keys): keys of an id's 10 time digits and 2 random ones, 14 bytes
# narrower than the whole id (issue 18, bytes per finished run). Every run id is "run_"
# and 26 digits (outlast._ids), so (ID_KEY, id) order is id order; the lists order by
# both and bound a page by both, the key alone being what the index can range over.
ID_KEY = "substr(r.id, 5, 12)"
BY_ID_DESC = f"ORDER BY {ID_KEY} DESC, r.id DESC"
BY_ID_ASC = f"ORDER BY {ID_KEY}, r.id"


def id_bound(op: str, param: str) -> str:
    """``r.id <op> :param`` in the lists' order (op one of <, <=, >): the key's range,
    which the index serves, and the exact bound."""
    key = f"substr(:{param}, 5, 12)"
    loose = {"<": "<=", "<=": "<=", ">": ">="}[op]
    return f"{ID_KEY} {loose} {key} AND ({ID_KEY}, r.id) {op} ({key}, :{param})"


class Tx(Protocol):
    def q(self, name: str, /, **params: Any) -> list[Row]: ...

    def x(self, name: str, /, **params: Any) -> int: ...

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def script(self, sql: str) -> None: ...


def load_queries(dialect: str) -> dict[str, str]:
    """Parse ``-- name: x`` blocks; ``x [dialect]`` overrides ``x`` for that dialect."""
    text = resources.files("outlast.store").joinpath("sql/queries.sql").read_text()
    queries: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        m = re.fullmatch(r"(\w+)(?: \[(\w+)\])?\s*", header)
        if m is None:
            raise ValueError(f"bad query header: {header!r}")
        name, only = m.group(1), m.group(2)
        if name in (queries if only is None else overrides if only == dialect else {}):
            # Two blocks of one name: the later would silently replace the earlier.
            raise ValueError(f"query {header.strip()!r} is defined twice in queries.sql")
        sql = "\n".join(
            line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if only is None:
            queries[name] = sql
        elif only == dialect:
            overrides[name] = sql
    queries.update(overrides)
    return queries


def schema_sql(dialect: str) -> str:
    return resources.files("outlast.store").joinpath(f"sql/schema.{dialect}.sql").read_text()


def migrations(dialect: str) -> list[tuple[int, str]]:
    """Forward-only migrations ``sql/migrations/NNNN_name.<dialect>.sql`` after version 1."""
    folder = resources.files("outlast.store").joinpath("sql/migrations")
    found: list[tuple[int, str]] = []
    if folder.is_dir():
        for entry in folder.iterdir():
            m = re.fullmatch(rf"(\d+)_\w+\.{dialect}\.sql", entry.name)
            if m:
                found.append((int(m.group(1)), entry.read_text()))
    return sorted(found)


# The schema version this code writes: its newest migration's number (1 is the base
# schema). Derived, not written by hand, so a new migration cannot forget to bump it.
SCHEMA_VERSION = max((n for n, _ in migrations("sqlite")), default=1)


def _b(value: Any) -> bool:
    return bool(value)


def run_from_row(row: Row) -> Run:
    # A finished row stores NULL for an available_at equal to created_at and for a
    # priority or exec_seconds of 0 (queries.sql, complete_run): read back as those values,
    # so a Run reads the same before and after its run finished.
    available_at = row["available_at"]
    return Run(
        id=row["id"],
        env=row["env"],
        task_id=row["task_id"],
        queue=row["queue"],
        status=RunStatus(row["status"]),
        payload=loads(row["payload"]),
        output=loads(row["output"]),
        error=loads(row["error"]),
        metadata=loads(row["metadata"]) or {},
        tags=loads(row["tags"]) or [],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        priority=row["priority"] or 0.0,
        concurrency_key=row["concurrency_key"] or None,
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        available_at=row["created_at"] if available_at is None else available_at,
        delay_until=row["delay_until"],
        ttl_expires_at=row["ttl_expires_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        max_duration=row["max_duration"],
        worker_id=row["worker_id"],
        parent_id=row["parent_id"],
        root_id=row["root_id"],
        depth=row["depth"],
        replayed_from=row["replayed_from"],
        cancel_requested=_b(row["cancel_requested"]),
        wait_reason=loads(row["wait_reason"]),
        lease_epoch=row["lease_epoch"],
        exec_seconds=row["exec_seconds"] or 0.0,
        segment_started_at=row["segment_started_at"],
        idempotency_expires_at=row["idempotency_expires_at"],
        version=row["version"],
        active_seconds=float(row.get("active_seconds") or 0.0),
        queued_seconds=float(row.get("queued_seconds") or 0.0),
        waited_seconds=float(row.get("waited_seconds") or 0.0),
    )


def _journal_entry(row: Row) -> JournalEntry:
    return JournalEntry(
        key=row["key"],
        kind=row["kind"],
        fingerprint=row["fingerprint"],
        status=row["status"],
        output=row["output"],
        waitpoint_id=row["waitpoint_id"],
        attempt=row["attempt"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _waitpoint(row: Row, waiting: list[str] | None = None) -> Waitpoint:
    return Waitpoint(
        id=row["id"],
        env=row["env"],
        kind=row["kind"],
        status=row["status"],
        run_id=row["run_id"],
        timeout_at=row["timeout_at"],
        output=loads(row["output"]),
        is_error=_b(row["is_error"]),
        idempotency_key=row["idempotency_key"],
        tags=loads(row["tags"]) or [],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        waiting_runs=waiting or [],
        buttons=loads(row["buttons"]) if row.get("buttons") else None,
    )


def _task_def(row: Row) -> TaskDef:
    return TaskDef(
        id=row["id"],
        queue=row["queue"],
        payload_schema=loads(row["payload_schema"]),
        spec=loads(row["spec"]),
        updated_at=row["updated_at"],
    )


def _error(code: str, message: str) -> str:
    return dumps({"code": code, "message": message})
