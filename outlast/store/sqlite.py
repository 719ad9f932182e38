"""The embedded backend: one SQLite file, any number of processes on one machine.

Durability: WAL with ``synchronous=FULL`` by default, so a trigger or step acknowledged
to a caller survives ``kill -9`` and power loss. ``OUTLAST_SQLITE_SYNCHRONOUS=NORMAL``
trades the last few commits on power loss (never on a process crash) for speed.

Writers take the file's write lock up front (``BEGIN IMMEDIATE``) and wait for it up to
``busy_timeout``, so concurrent processes queue instead of failing with "database is
locked". A worker holds an OS file lock beside the database for its whole life; when
the process dies the kernel drops it, which is how survivors notice within a poll (C9).

Wake-ups across processes, the part PostgreSQL does with LISTEN/NOTIFY: a waiting worker
binds a Unix datagram socket beside its lock file, and a transaction that made work ready
sends each such socket one byte after it commits. The worker's poll stays the source of
truth: a lost byte costs one poll interval, an extra one costs one empty claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import select
import socket
import sqlite3
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._clock import Clock, SystemClock
from .._errors import ConfigurationError, SerializationError
from .._serde import dumps
from . import _sql_events_sqlite as _events
from ._rows import Row
from ._sql import SqlStore
from ._sql_events_sqlite import SqliteEventsMixin
from .base import NewRun

log = logging.getLogger(__name__)

_SYNC_MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


class _Tx:
    def __init__(self, conn: sqlite3.Connection, queries: Mapping[str, str]) -> None:
        self.conn = conn
        self.queries = queries
        self.ready = False  # work became ready: wake other processes' workers after COMMIT

    def q(self, name: str, /, **params: Any) -> list[Row]:
        return self.conn.execute(self.queries[name], params).fetchall()

    def x(self, name: str, /, **params: Any) -> int:
        return self.conn.execute(self.queries[name], params).rowcount

    def many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.conn.executemany(self.queries[name], rows)

    def script(self, sql: str) -> None:
        # executescript() would COMMIT the open transaction first; run statements one by
        # one so a migration is all-or-nothing.
        body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
        for statement in re.split(r";\s*\n", body):
            if statement.strip():
                self.conn.execute(statement)


class LifeLock:
    """An exclusive lock on a file, held while the process lives."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def alive(self) -> bool:
        """Whether the lock file is still the one locked: peers take a missing file for a
        dead worker."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class SQLiteStore(SqliteEventsMixin, SqlStore):
    dialect = "sqlite"
    backend = "sqlite"

    def refused_data(self, exc: Exception) -> bool:
        # DataError: a string or blob too big. A full disk, a locked or read-only file are
        # OperationalError: transient, retried. SerializationError: a batch's plain runs
        # go as one JSON text (insert_lean_runs), which a lone surrogate cannot be.
        return isinstance(
            exc, ValueError | sqlite3.DataError | sqlite3.IntegrityError | SerializationError)

    def __init__(self, url: str, clock: Clock | None = None) -> None:
        super().__init__()
        self.url = url
        self.clock = clock or SystemClock()
        self.path = _path_from_url(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sync = os.environ.get("OUTLAST_SQLITE_SYNCHRONOUS", "FULL").upper()
        if sync not in _SYNC_MODES:
            raise ConfigurationError(
                f"OUTLAST_SQLITE_SYNCHRONOUS must be one of {sorted(_SYNC_MODES)}, not {sync!r}"
            )
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.row_factory = _dict_row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={sync}")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._host = socket.gethostname()
        # Wake-up sockets are named <host tag>-<random>.wake, short because a socket's path
        # is limited to about 100 bytes; the tag tells this host's dead sockets (safe to
        # remove) from another host's.
        self._host_tag = hashlib.blake2s(self._host.encode(), digest_size=3).hexdigest()
        self._waiter: socket.socket | None = None  # bound on the first wait_for_work
        self._waiter_path: str | None = None
        self._waiter_failed = False
        self._wake_dir = str(self.lock_dir)
        self._abstract_prefix: bytes | None = None  # _abstract's, computed on first use
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        # Closed and unlinked by close(), or when the store is collected or the process exits.
        self._sockets = [self._sender]
        self._socket_paths: list[str] = []
        self._release_sockets = weakref.finalize(
            self, _release_sockets, self._sockets, self._socket_paths
        )

    @property
    def lock_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".workers")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            tx = _Tx(self._conn, self.q)
            try:
                yield tx
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        if tx.ready:
            self._wake_other_processes()

    def _insert_alone(self, run: NewRun, now: float) -> bool:
        # A run with tags needs its run_tags rows in the same transaction: take one.
        if run.tags:
            return False
        row = self._run_row(run, now)
        with self._lock:
            if self._conn.in_transaction:
                return False  # inside a transaction of this thread: the caller's path
            # With no transaction open the INSERT is its own: it takes the write lock as
            # BEGIN IMMEDIATE would (waiting up to busy_timeout), and execute() returns
            # once it has committed under the same synchronous setting. That saves
            # BEGIN, COMMIT and the transaction's bookkeeping (_transaction, _Tx,
            # _insert_runs): most of the store's Python time per trigger.
            self._conn.execute(self.q["insert_run"], row)
        if not run.delay:
            self._wake_other_processes()
        return True

    def _insert_plain(self, tx: Any, runs: Sequence[NewRun], now: float) -> None:
        # A batch's runs that need nothing but their row go in one statement of JSON rows
        # (insert_lean_runs), as a publish's fan-out does: binding insert_run's 28 named
        # parameters per run, ten of them NULL, costs more than SQLite's insert.
        lean = [r for r in runs if _events.lean(r)]
        if len(lean) < 2:
            super()._insert_plain(tx, runs, now)
            return
        for env in {r.env for r in lean}:
            _events.insert_lean(tx, env, [r for r in lean if r.env == env], now)
        if len(lean) < len(runs):
            super()._insert_plain(tx, [r for r in runs if not _events.lean(r)], now)

    def _list(self, values: Sequence[Any]) -> Any:
        return dumps(list(values))

    def _raw(self, tx: Any, sql: str, params: Mapping[str, Any]) -> list[Row]:
        rows: list[Row] = tx.conn.execute(sql, params).fetchall()
        return rows

    def _schema_exists(self) -> bool:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'outlast_schema'"
            ).fetchall()
        return bool(rows)

    def _notify(self, tx: Any, env: str) -> None:
        tx.ready = True

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            path, self._waiter, self._waiter_path = self._waiter_path, None, None
            self._waiter_failed = True
            if path is not None:
                self._send(path)  # a thread still waiting on it returns now
            self._release_sockets()

    # -- wake-ups: a datagram socket per waiting process; the caller's poll stays the ----
    # -- source of truth ------------------------------------------------------------------
    def wake_local(self) -> None:
        self._wake.set()
        path = self._waiter_path
        if path is not None:
            self._send(path)

    def wait_for_work(self, timeout: float) -> None:
        waiter = self._waiter if self._waiter is not None else self._bind_waiter()
        if waiter is None:
            self._wake.wait(timeout)
        else:
            if not self._wake.is_set():
                with contextlib.suppress(OSError, ValueError):  # the socket closed
                    poller = select.poll()
                    poller.register(waiter, select.POLLIN)
                    poller.poll(max(0, round(timeout * 1000)))
            _drain(waiter)
        self._wake.clear()

    def wakeup_fd(self) -> int | None:
        waiter = self._waiter if self._waiter is not None else self._bind_waiter()
        return None if waiter is None else waiter.fileno()

    def drain_wakeups(self) -> bool:
        waiter = self._waiter
        if waiter is None:
            return False
        _drain(waiter)
        self._wake.clear()
        return True

    def _bind_waiter(self) -> socket.socket | None:
        with self._lock:
            if self._waiter is not None or self._waiter_failed:
                return self._waiter
            path = os.path.join(self._wake_dir, f"{self._host_tag}-{secrets.token_hex(4)}.wake")
            waiter = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                self.lock_dir.mkdir(parents=True, exist_ok=True)
                if len(os.fsencode(path)) > _SOCKET_PATH_MAX and _ABSTRACT_SOCKETS:
                    # Too long a path for a socket: an abstract one, found through a
                    # marker file of this name (``_abstract``).
                    path += "a"
                    waiter.bind(self._abstract(os.path.basename(path)))
                    with open(path, "x"):
                        pass
                else:
                    waiter.bind(path)
            except OSError as exc:  # e.g. a path longer than a socket's may be
                waiter.close()
                self._waiter_failed = True
                log.warning(
                    "no wake-up socket at %s (%s): work triggered by other processes is"
                    " found at the next poll",
                    path,
                    exc,
                )
                return None
            self._sockets.append(waiter)
            self._socket_paths.append(path)
            self._waiter, self._waiter_path = waiter, path
            return waiter

    def _wake_other_processes(self) -> None:
        try:
            with os.scandir(self._wake_dir) as entries:
                paths = [e.path for e in entries if e.name.endswith((".wake", ".wakea"))]
        except OSError:
            return  # no worker has waited yet
        own, ours = self._waiter_path, os.path.join(self._wake_dir, f"{self._host_tag}-")
        for path in paths:
            if path != own and not self._send(path) and path.startswith(ours):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # nobody bound to it: a worker of this host that died

    def _abstract(self, marker: str) -> bytes:
        """The abstract address of the waiter whose marker file is ``marker`` in the wake
        directory: named by the directory's real path (hashed once per store), so every
        process of this host, by whatever path it opened the database, computes it alike."""
        if self._abstract_prefix is None:
            real = os.fsencode(os.path.realpath(self._wake_dir))
            digest = hashlib.blake2s(real, digest_size=8).hexdigest()
            self._abstract_prefix = f"\0outlast-{digest}-".encode()
        return self._abstract_prefix + marker.encode()

    def _send(self, path: str) -> bool:
        """Send one byte to a waiter's socket; False if no process is bound to it."""
        address: str | bytes = path
        if path.endswith(".wakea"):  # a marker: the waiter's socket is abstract
            address = self._abstract(os.path.basename(path))
        try:
            self._sender.sendto(b"\0", address)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            pass  # its queue is full (a wake-up is pending anyway), or the socket closed
        return True

    # -- worker life locks ----------------------------------------------------------------
    def acquire_life_lock(self, worker_id: str) -> tuple[LifeLock, int | None, str | None]:
        lock = LifeLock(self.lock_dir / f"{worker_id}.lock")
        return lock, None, str(lock.path)

    def dead_workers(self, alive: Sequence[dict[str, Any]]) -> list[str]:
        return [w["id"] for w in alive if self._lock_free(w)]

    def _lock_free(self, info: dict[str, Any]) -> bool:
        path = info.get("lock_path")
        if not path or info.get("host") != self._host:
            return False
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True  # a live worker keeps its file; a missing one means it is gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing the descriptor drops our probe lock too
        return True


# A socket's path (sun_path) holds 108 bytes on Linux, 104 on macOS, with its NUL.
_SOCKET_PATH_MAX = 100
# Linux binds sockets to names outside the file system (a leading NUL): a database whose
# directory is too deep for a socket's path still gets wake-ups there.
_ABSTRACT_SOCKETS = sys.platform.startswith("linux")


def _drain(waiter: socket.socket) -> None:
    """Read every pending wake-up: many since the last wait count as one."""
    with contextlib.suppress(OSError, ValueError):  # BlockingIOError ends the drain
        while True:
            waiter.recv(16, socket.MSG_DONTWAIT)


def _release_sockets(sockets: list[socket.socket], paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
    for sock in sockets:
        sock.close()


def _path_from_url(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(
            f"a SQLite URL looks like sqlite:///path/to/file.db, not {url!r}",
            field="OUTLAST_DATABASE_URL",
        )
    return Path(url.removeprefix("sqlite:///")).expanduser()
