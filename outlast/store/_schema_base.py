"""Schema upgrades without downtime: what a migration is, what the database says about
the schema, and the store's side of it (the ``SchemaOps`` ABC).

Migrations are expand-then-contract. An *expand* migration only adds (a table, a column
with a default or NULL, an index), so code of the release before it keeps working on the
new schema; a *contract* migration takes something away, so it may run only once no live
process of an older release is left. A migration file says which it is on a line of its
own, ``-- outlast: contract``; one that says nothing is an expand migration.

A migration's identity is its *name* (``NNNN_<name>.<dialect>.sql``), not its number:
the database records the names applied with their kinds, and a process compares them with
the names its own code knows. Numbers only order the files.
"""

from __future__ import annotations

import abc
import functools
import re
from dataclasses import dataclass, field
from importlib import metadata, resources
from typing import Any

from .._errors import SchemaVersionError

EXPAND = "expand"
CONTRACT = "contract"


def release() -> str:
    """This outlast's release, as processes record it."""
    try:
        return metadata.version("outlast")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    kind: str  # expand | contract
    sql: str


def migration_files(dialect: str) -> list[Migration]:
    """This code's migrations after version 1, in the order they apply."""
    return list(_read_migrations(dialect))


@functools.cache
def _read_migrations(dialect: str) -> tuple[Migration, ...]:
    """Read once per process: every schema check compares against them."""
    folder = resources.files("outlast.store").joinpath("sql/migrations")
    found: list[Migration] = []
    if folder.is_dir():
        for entry in folder.iterdir():
            m = re.fullmatch(rf"(\d+)_(\w+)\.{dialect}\.sql", entry.name)
            if m:
                sql = entry.read_text()
                marked = re.search(r"^-- outlast: (expand|contract)\s*$", sql, flags=re.M)
                kind = marked.group(1) if marked else EXPAND
                found.append(Migration(int(m.group(1)), m.group(2), kind, sql))
    return tuple(sorted(found, key=lambda m: (m.number, m.name)))


class ContractBlocked(SchemaVersionError):
    """A contract migration waits: live processes of an older release still use the
    schema it would take away."""

    code = "contract_blocked"


@dataclass(frozen=True)
class ProcessRow:
    """A live process and the release it runs."""

    id: str
    kind: str  # worker | server | unknown (a worker of a release from before registration)
    env: str
    host: str
    pid: int
    release: str  # "unknown" for a worker that registered no release
    schema_version: int | None
    migrations: frozenset[str] | None  # names its code knows; None: unknown
    started_at: float
    listen: str | None = None  # a server's host:port
    dashboard: str | None = None  # a server's dashboard guard: password | open | locked

    def knows(self, migration: str) -> bool:
        return self.migrations is not None and migration in self.migrations


@dataclass
class SchemaStatus:
    """The schema as this code sees it (``outlast migrate --check``)."""

    exists: bool
    version: int | None  # outlast_schema.version
    code_version: int  # this code's SCHEMA_VERSION
    applied: dict[str, str] = field(default_factory=dict)  # name -> kind, in the database
    pending: list[Migration] = field(default_factory=list)  # this code's, not yet applied
    unknown: dict[str, str] = field(default_factory=dict)  # applied, not in this code
    unaccounted: bool = False  # version beyond every recorded migration
    processes: list[ProcessRow] = field(default_factory=list)

    def blockers(self, migration: Migration) -> list[ProcessRow]:
        """Live processes a contract migration must wait for: those whose code predates
        it (or whose release is unknown)."""
        return [p for p in self.processes if not p.knows(migration.name)]

    @property
    def newer(self) -> bool:
        """The database is ahead of this code in a way it cannot run on."""
        return self.unaccounted or any(k != EXPAND for k in self.unknown.values())

    @property
    def runnable(self) -> bool:
        """This code may run on the schema as it is: nothing it does not know but expand
        migrations, nothing missing but contract ones (those wait for older processes)."""
        return self.exists and not self.newer and all(m.kind == CONTRACT
                                                      for m in self.pending)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exists": self.exists,
            "version": self.version,
            "code_version": self.code_version,
            "runnable": self.runnable,
            "applied": self.applied,
            "pending": [{"number": m.number, "name": m.name, "kind": m.kind,
                         "waits_for": [p.id for p in self.blockers(m)]
                         if m.kind == CONTRACT else []} for m in self.pending],
            "unknown": self.unknown,
            "processes": [
                {"id": p.id, "kind": p.kind, "env": p.env, "host": p.host, "pid": p.pid,
                 "release": p.release, "schema_version": p.schema_version,
                 "started_at": p.started_at, "listen": p.listen, "dashboard": p.dashboard}
                for p in self.processes
            ],
        }


class SchemaOps:
    """The store's side of schema upgrades and process registration (abstract: Store,
    an ABC, lists it among its bases)."""

    @abc.abstractmethod
    def schema_status(self) -> SchemaStatus:
        """What is applied, what this code would apply, who runs which release."""

    @abc.abstractmethod
    def register_process(self, process_id: str, kind: str, env: str, *,
                         listen: str | None = None, dashboard: str | None = None) -> None:
        """Record a (non-worker) process and the release it runs; workers are recorded
        by ``register_worker``."""

    @abc.abstractmethod
    def touch_process(self, process_id: str) -> None:
        """A registered process is still alive."""

    @abc.abstractmethod
    def stop_process(self, process_id: str) -> None:
        """A registered process stopped cleanly."""
