"""Migrating, checking the schema, and the registry of processes and their releases.

Upgrading outlast without downtime (docs/how-to/upgrading-outlast.md): ``migrate``
applies this code's pending migrations in order, expand ones at once, a contract one only
while no live process predates it (else it stops there: ``migrate(contract=True)`` raises
instead). ``check_schema`` lets a process run on a schema that is ahead of it by expand
migrations only, or behind it by contract migrations only.
"""

from __future__ import annotations

import abc
import logging
import os
import socket
import time
from typing import Any

from .._errors import SchemaVersionError
from .._serde import dumps, loads
from ._rows import SCHEMA_VERSION, Tx, schema_sql
from ._schema_base import (
    CONTRACT,
    EXPAND,
    ContractBlocked,
    Migration,
    ProcessRow,
    SchemaOps,
    SchemaStatus,
    migration_files,
    release,
)
from ._sql_core import SqlCore

log = logging.getLogger(__name__)

# A server (or other non-worker process) not seen for this long is taken for gone; it
# refreshes its row every SEEN_EVERY seconds.
SEEN_EVERY = 15.0
SEEN_STALE = 60.0
PROCESS_HISTORY = 7 * 86400.0


MIGRATE_ATTEMPTS = 6  # a migration chosen as a deadlock's victim is tried again


def _lock_conflict(exc: BaseException) -> bool:
    """A deadlock, lock timeout or serialization failure (SQLSTATE 40P01, 55P03, 40001):
    the transaction lost to another and may simply run again."""
    return getattr(exc, "sqlstate", None) in {"40P01", "55P03", "40001"}


def _code_version() -> int:
    return SCHEMA_VERSION


class SchemaMixin(SqlCore, SchemaOps):
    """A part of SqlStore: the schema and the processes registry."""

    @abc.abstractmethod
    def _schema_exists(self) -> bool: ...

    def _lock_for_migration(self, tx: Tx) -> None:
        """Serialize concurrent migrations (PostgreSQL takes an advisory lock)."""

    @property
    @abc.abstractmethod
    def safe_url(self) -> str: ...

    # -- reading --------------------------------------------------------------------------
    def _has_table(self, tx: Tx, name: str) -> bool:
        return bool(tx.q("table_exists", name=name))

    def _status(self, tx: Tx, *, processes: bool) -> SchemaStatus:
        files = migration_files(self.dialect)
        rows = tx.q("schema_version")
        version = int(rows[0]["version"]) if rows else 0
        status = SchemaStatus(exists=True, version=version, code_version=_code_version())
        if self._has_table(tx, "outlast_migrations"):
            recorded = tx.q("applied_migrations")
            status.applied = {r["name"]: r["kind"] for r in recorded}
            highest = max((int(r["number"]) for r in recorded), default=1)
        else:
            # A schema from before migrations were recorded: numbers were still linear,
            # so every file up to the version is applied.
            status.applied = {m.name: m.kind for m in files if m.number <= version}
            highest = max((m.number for m in files if m.number <= version), default=1)
        known = {m.name for m in files}
        status.unknown = {n: k for n, k in status.applied.items() if n not in known}
        status.unaccounted = version > highest  # a newer release that recorded nothing
        status.pending = [m for m in files if m.name not in status.applied]
        if processes and self._has_table(tx, "processes"):
            status.processes = self._live_processes(tx)
        return status

    def _live_processes(self, tx: Tx) -> list[ProcessRow]:
        now = self.now()
        found = [
            ProcessRow(
                id=r["id"], kind=r["kind"], env=r["env"], host=r["host"], pid=int(r["pid"]),
                release=r["release"], schema_version=int(r["schema_version"]),
                migrations=frozenset(loads(r["migrations"])), started_at=r["started_at"],
                # Absent until this release's expand migration is applied.
                listen=_col(r, "listen"), dashboard=_col(r, "dashboard"),
            )
            for r in tx.q("live_processes", now=now, since=now - SEEN_STALE)
        ]
        found += [
            ProcessRow(id=r["id"], kind="worker", env=r["env"], host=r["host"],
                       pid=int(r["pid"]), release="unknown", schema_version=None,
                       migrations=None, started_at=r["started_at"])
            for r in tx.q("live_unregistered_workers", now=now)
        ]
        return found

    def schema_status(self) -> SchemaStatus:
        if not self._schema_exists():
            return SchemaStatus(exists=False, version=None, code_version=_code_version())
        with self._transaction() as tx:
            return self._status(tx, processes=True)

    # -- migrating ------------------------------------------------------------------------
    def migrate(self, *, contract: bool = False) -> int:
        """Apply this code's pending migrations; return the schema version.

        A contract migration is applied only if no live process predates it; otherwise
        migrating stops before it (and raises ContractBlocked if ``contract``)."""
        for attempt in range(MIGRATE_ATTEMPTS):
            try:
                return self._migrate_once(contract)
            except Exception as exc:
                # Live workers of the previous release lock runs, queues and workers rows
                # while the migration's DDL locks whole tables, one after another: the
                # database may pick the migration as a deadlock's victim. Its transaction
                # rolled back whole (DDL is transactional), so trying again is safe.
                if _lock_conflict(exc) and attempt + 1 < MIGRATE_ATTEMPTS:
                    log.warning("migration lost a lock conflict (%s); trying again", exc)
                    time.sleep(0.2 * 2**attempt)
                    continue
                raise
        raise AssertionError("unreachable")

    def _migrate_once(self, contract: bool) -> int:
        with self._transaction() as tx:
            self._lock_for_migration(tx)
            if not self._schema_exists():
                return self._create(tx)
            status = self._status(tx, processes=True)
            if status.newer:
                raise SchemaVersionError(
                    f"the database schema is version {status.version}, newer than this "
                    f"outlast ({status.code_version}){_unknown(status)}; upgrade outlast"
                )
            version = status.version or 0
            blocked = False
            for m in status.pending:
                if m.kind == CONTRACT:
                    waiting = status.blockers(m)
                    if waiting and contract:
                        raise ContractBlocked(_blocked_message(m, waiting))
                    if waiting or blocked:
                        # Contracts keep their order: this one and every later one wait.
                        # Later expand migrations do not: they only add, so the code of
                        # this release can run beside the older processes still alive.
                        if waiting:
                            log.warning("%s", _blocked_message(m, waiting))
                        blocked = True
                        continue
                tx.script(m.sql)
                status.applied[m.name] = m.kind
                version = max(version, m.number)
                tx.x("set_schema_version", version=version)
            self._record(tx, status.applied)
            return version

    def _create(self, tx: Tx) -> int:
        tx.script(schema_sql(self.dialect))
        version = _code_version()
        tx.x("insert_schema_version", version=version)
        self._record(tx, {m.name: m.kind for m in migration_files(self.dialect)})
        return version

    def _record(self, tx: Tx, applied: dict[str, str]) -> None:
        """Record applied migrations by name (once the table exists: the migration that
        creates it may just have run; older ones are recorded then, after the fact)."""
        if not self._has_table(tx, "outlast_migrations"):
            return
        numbers = {m.name: m.number for m in migration_files(self.dialect)}
        now, rel = self.now(), release()
        for name, kind in applied.items():
            if name in numbers:
                tx.x("record_migration", name=name, number=numbers[name], kind=kind,
                     now=now, release=rel)

    def check_schema(self) -> None:
        if not self._schema_exists():
            raise SchemaVersionError(
                f"the database has no outlast schema; this outlast needs version "
                f"{_code_version()}. Run `outlast migrate` (database: {self.safe_url})"
            )
        with self._transaction() as tx:
            status = self._status(tx, processes=False)
        if status.newer:
            # Migrating cannot help here: the code is older than the database.
            raise SchemaVersionError(
                f"the database has schema version {status.version}, newer than this outlast "
                f"(version {status.code_version}){_unknown(status)}; upgrade outlast: "
                f"pip install -U outlast (database: {self.safe_url})"
            )
        missing = [m for m in status.pending if m.kind == EXPAND]
        if missing:
            raise SchemaVersionError(
                f"the database has schema version {status.version}; this outlast needs "
                f"version {status.code_version} (missing: "
                f"{', '.join(m.name for m in missing)}). Run `outlast migrate` "
                f"(database: {self.safe_url})"
            )

    # -- processes ------------------------------------------------------------------------
    def _insert_process(self, tx: Tx, process_id: str, kind: str, env: str,
                        listen: str | None = None, dashboard: str | None = None) -> None:
        if not self._has_table(tx, "processes"):
            return  # a schema awaiting `outlast migrate`; check_schema said so already
        # One row per start: those gone a week are only history.
        tx.x("prune_processes", before=self.now() - PROCESS_HISTORY)
        tx.x("register_process", id=process_id, kind=kind, env=env, host=socket.gethostname(),
             pid=os.getpid(), release=release(), schema_version=_code_version(),
             migrations=dumps(sorted(m.name for m in migration_files(self.dialect))),
             now=self.now(), listen=listen, dashboard=dashboard)

    def register_process(self, process_id: str, kind: str, env: str, *,
                         listen: str | None = None, dashboard: str | None = None) -> None:
        with self._transaction() as tx:
            self._insert_process(tx, process_id, kind, env, listen, dashboard)

    def touch_process(self, process_id: str) -> None:
        with self._transaction() as tx:
            tx.x("touch_process", id=process_id, now=self.now())

    def stop_process(self, process_id: str) -> None:
        with self._transaction() as tx:
            tx.x("stop_process", id=process_id, now=self.now())


def _col(row: Any, name: str) -> Any:
    return row[name] if name in row.keys() else None  # noqa: SIM118 - sqlite3.Row


def _unknown(status: SchemaStatus) -> str:
    kinds = [f"{n} ({k})" for n, k in status.unknown.items() if k != EXPAND]
    return f": it has migrations this release predates: {', '.join(kinds)}" if kinds else ""


def _blocked_message(m: Migration, waiting: list[ProcessRow]) -> str:
    who = ", ".join(f"{p.kind} {p.id} on {p.host} (release {p.release}, schema "
                    f"{p.schema_version if p.schema_version is not None else '?'})"
                    for p in waiting[:10])
    more = f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
    return (
        f"contract migration {m.number:04d}_{m.name} waits: {len(waiting)} live processes "
        f"run an older release: {who}{more}. Upgrade or stop them, then run "
        f"`outlast migrate --contract` (`outlast migrate --check` lists them)"
    )
