"""The PostgreSQL backend: any number of servers and workers on any number of machines.

Differences from SQLite are confined here: a connection pool, row locks (``FOR UPDATE
SKIP LOCKED`` in the queries), LISTEN/NOTIFY wake-ups, session advisory locks as worker
life locks (C9), and the database's clock as the judge of leases (C4).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import operator
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson
import psycopg
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import Format, TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .._clock import Clock
from ._pg_handover import HandoverMixin
from ._pg_listen import CHANNEL, ListenMixin
from ._pg_session import (
    DEFAULT_IDLE_TX_TIMEOUT,
    KEEPALIVES,
    client_keepalives,
    configure_pooled,
    session_bounds,
    session_connection,
)
from ._pg_tx import _LateBeginTx, _Tx, late_begin
from ._rows import Row
from ._sql import SqlStore
from ._sql_app_tx import AppTransactionMixin
from ._sql_events_pg import PgEventsMixin
from .base import EndSegment, NewRun, StartWait

log = logging.getLogger(__name__)

# An idle claim reads ahead the open slots of at most this many queues with work
# (_may_claim_and_lock)
_SLOTS_AHEAD = 4
_REFUSED_DATA = ("22", "23", "54")  # SQLSTATE classes that say the data was refused
_MIGRATION_LOCK = 0x6F75_746C_6173_74  # "outlast"
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
# copy_runs columns whose value a trigger row holds under another name.
_COPY_KEYS = {"created_at": "now", "updated_at": "now"}
# What a run's copy_runs row depends on besides its id, payload and metadata (and the time).
_SHARED_FIELDS = operator.attrgetter(
    *(f.name for f in dataclasses.fields(NewRun) if f.name not in ("id", "payload", "metadata"))
)
_INT4 = struct.Struct(">i")


def to_psycopg(sql: str) -> str:
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


class DatabaseClock:
    """The database server's clock, read without a round trip per call.

    The offset to the local clock is measured (halving the round trip) and refreshed
    every 30 s, so every worker judges leases and due times by one clock (C4). A sync
    reads the server's clock a few times and keeps the reading of the shortest round
    trip: the halving is right only when both legs take as long, and a slow first query
    on a new connection (milliseconds, one leg mostly) put one process's clock up to a
    couple of milliseconds off another's."""

    SAMPLES = 5

    def __init__(self, pool: ConnectionPool[Any], wall: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._wall = wall
        self._offset = 0.0
        self._synced = -1e18
        self._lock = threading.Lock()

    def now(self) -> float:
        mono = time.monotonic()
        if mono - self._synced > 30.0:
            with self._lock:
                if mono - self._synced > 30.0:
                    self._sync()
        return self._wall() + self._offset

    def _sync(self) -> None:
        best: tuple[float, float] | None = None  # (round trip, offset)
        with self._pool.connection() as conn:
            for _ in range(self.SAMPLES):
                t0 = self._wall()
                row = conn.execute(
                    "SELECT extract(epoch FROM clock_timestamp()) AS t"
                ).fetchone()
                t1 = self._wall()
                assert row is not None
                sample = (t1 - t0, float(row["t"]) - (t0 + t1) / 2)
                if best is None or sample[0] < best[0]:
                    best = sample
        assert best is not None
        self._offset = best[1]
        self._synced = time.monotonic()


class AdvisoryLock:
    """A session advisory lock on a connection of its own, held for the worker's life.

    If the process dies, PostgreSQL ends the session and frees the lock."""

    def __init__(self, url: str, key: int, direct_url: str | None = None) -> None:
        # TCP keepalives and a user timeout bound how long a check of the lock can hang
        # on a connection whose peer vanished without a reset (a silent partition): the
        # heartbeat thread runs the check, and must get on to telling the worker.
        self._conn = session_connection(url, direct_url, "a worker's life lock", **KEEPALIVES)
        self._conn.execute("SELECT pg_advisory_lock(%s)", (key,))

    def alive(self) -> bool:
        """Whether the session holding the lock still lives: a database restart, a
        terminated backend or a cut connection ends it, and with it the lock, while the
        worker's row may still say alive. One round trip on an idle connection."""
        if self._conn.closed or self._conn.broken:
            return False
        try:
            self._conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


class _CopyLayout:
    """Binary COPY data for copy_runs, written here rather than by psycopg's write_row.

    The runs of a batch differ only in id and payload (and an event's runs in their
    metadata), so a row is the previous row's encoding with those fields spliced in:
    each other value is dumped (by psycopg, as the column's type says) once per run of
    new options rather than once per run, and the trigger row dict, built for every run
    before, is built for those runs only. That was two thirds of a 1000-run batch's
    Python time in the store."""

    _SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no flags, no header extension
    _TRAILER = b"\xff\xff"
    _NULL = b"\xff\xff\xff\xff"
    _CHUNK = 1000  # pieces per write: the server inserts a chunk while the next is built

    def __init__(self, columns: Sequence[str], oids: Sequence[int]) -> None:
        self.oids = list(oids)
        self.values = operator.itemgetter(*(_COPY_KEYS.get(c, c) for c in columns))
        self.at_id = columns.index("id")
        self.at_payload = columns.index("payload")
        self.at_metadata = columns.index("metadata")
        assert self.at_id < self.at_payload < self.at_metadata
        self.count = struct.pack(">h", len(columns))

    def encode(
        self,
        conn: psycopg.Connection[Any],
        runs: Iterable[NewRun],
        now: float,
        run_row: Callable[[NewRun, float], Row],
    ) -> Iterator[bytes]:
        """The COPY data of ``runs`` in chunks; ``run_row`` makes a run's trigger row."""
        tr = Transformer(conn)
        tr.set_dumper_types(self.oids, Format.BINARY)
        formats = [PyFormat.BINARY] * len(self.oids)
        dump_id = conn.adapters.get_dumper_by_oid(self.oids[self.at_id], Format.BINARY)
        dump_payload = conn.adapters.get_dumper_by_oid(self.oids[self.at_payload], Format.BINARY)
        dump_meta = conn.adapters.get_dumper_by_oid(self.oids[self.at_metadata], Format.BINARY)
        # The three columns are NOT NULL, so their dumps are never None.
        id_of: Callable[[str], Any] = dump_id(str, conn).dump
        payload_of: Callable[[str], Any] = dump_payload(str, conn).dump
        meta_of: Callable[[str], Any] = dump_meta(str, conn).dump
        size = _INT4.pack
        pieces: list[Any] = [self._SIGNATURE]
        shared: tuple[Any, ...] | None = None
        head = mid = mid2 = tail = b""
        # The last layout per task: a streamed fan-out (_sql_events_pg) alternates tasks.
        made: dict[str, tuple[tuple[Any, ...], tuple[bytes, bytes, bytes, bytes]]] = {}
        meta_text: str | None = None
        meta = b""
        payload_text: str | None = None
        payload_size = payload = b""
        for r in runs:
            # Runs equal in every field but id and payload have equal rows but for those
            # two columns (build_run normalizes what could be equal yet dump apart: int(),
            # float(), 0.0 for -0.0).
            fields = _SHARED_FIELDS(r)
            if fields != shared:
                shared = fields
                seen = made.get(r.task_id)
                if seen is not None and seen[0] == fields:
                    parts = seen[1]
                else:
                    dumped = [
                        self._NULL if v is None else size(len(v)) + bytes(v)
                        for v in tr.dump_sequence(self.values(run_row(r, now)), formats)
                    ]
                    parts = (self.count + b"".join(dumped[: self.at_id]),
                             b"".join(dumped[self.at_id + 1 : self.at_payload]),
                             b"".join(dumped[self.at_payload + 1 : self.at_metadata]),
                             b"".join(dumped[self.at_metadata + 1 :]))
                    made[r.task_id] = (fields, parts)
                head, mid, mid2, tail = parts
            if r.metadata is not meta_text:  # a batch trigger's runs share one text
                meta_text = r.metadata
                dumped_meta = meta_of(meta_text)
                meta = size(len(dumped_meta)) + bytes(dumped_meta)
            if r.payload is not payload_text:  # an event's runs share one text
                payload_text = r.payload
                payload = payload_of(payload_text)
                payload_size = size(len(payload))
            rid = id_of(r.id)
            pieces += (head, size(len(rid)), rid, mid, payload_size, payload, mid2, meta, tail)
            if len(pieces) >= self._CHUNK:
                yield b"".join(pieces)
                pieces = []
        pieces.append(self._TRAILER)
        yield b"".join(pieces)


# The per-run columns of insert_runs_alone, sent as one JSON array of objects.
_ROW_COLUMNS = (
    "id", "env", "task_id", "queue", "status", "payload", "metadata", "tags", "max_attempts",
    "priority", "concurrency_key", "available_at", "ready_at", "delay_until",
    "ttl_expires_at", "max_duration", "parent_id", "root_id", "depth", "replayed_from",
    "parent_waitpoint_id", "version",
)


class PostgresStore(HandoverMixin, ListenMixin, AppTransactionMixin, PgEventsMixin, SqlStore):
    dialect = "postgres"
    backend = "postgres"
    _channel = CHANNEL

    def refused_data(self, exc: Exception) -> bool:
        # psycopg's own DataError (NUL in text) has no SQLSTATE; the server's data
        # exceptions (22), integrity violations (23) and program limits (54: an index row
        # too big) do. Connection loss, shutdown, serialization failures are retried.
        if isinstance(exc, ValueError | psycopg.DataError | psycopg.IntegrityError):
            return True
        state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
        return state is not None and state[:2] in _REFUSED_DATA

    def __init__(self, url: str, clock: Clock | None = None, *, max_size: int = 8,
                 direct_url: str | None = None,
                 idle_tx_timeout: float = DEFAULT_IDLE_TX_TIMEOUT) -> None:
        super().__init__()
        self.q = {name: to_psycopg(sql) for name, sql in self.q.items()}
        self.q["notify"] = f"SELECT pg_notify('{CHANNEL}', %(env)s)"
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        # Session features (life locks, LISTEN) go here when set: see _pg_session.
        self.direct_url = (direct_url.replace("postgresql+psycopg://", "postgresql://", 1)
                           if direct_url else None)
        # Connections stay in autocommit: a statement outside a transaction is its own
        # (_insert_alone's one round trip; a lone read saves psycopg's BEGIN and the
        # pool's COMMIT, two round trips), and _transaction's conn.transaction() sends
        # BEGIN and COMMIT itself, as it does without autocommit. _insert_alone switched
        # the mode on and off per trigger, a tenth of the store's Python time in it.
        # Each new connection is bounded (idle in a transaction, TCP) once, by configure:
        # see _pg_session.
        bounds = session_bounds(idle_tx_timeout)
        self._idle_tx_ms = bounds.get("idle_in_transaction_session_timeout", 0)
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            self.url,
            min_size=1,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": True,
                    **client_keepalives(self.url)},
            configure=functools.partial(configure_pooled, bounds=bounds),
            open=True,
        )
        self.clock = clock or DatabaseClock(self._pool)
        self._init_listen()
        self._init_handovers()
        self._copy: _CopyLayout | None = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._pool.connection() as conn, conn.transaction():
            yield _Tx(conn, self.q)

    @contextlib.contextmanager
    def _commit_transaction(self) -> Iterator[_Tx]:
        # Pipeline mode (see _Tx): an idle claim took seven round trips (BEGIN, the
        # worker check, the queue locks, the open slots, the claim, the slots taken,
        # COMMIT), each a wake-up of this thread and of the server's on a busy machine;
        # BEGIN now rides with the first, the worker check with the queue locks
        # (_may_claim_and_lock), the slots taken with COMMIT: four. BEGIN and COMMIT are
        # sent as statements: conn.transaction() in pipeline mode waits for BEGIN alone
        # and for COMMIT alone.
        with self._pool.connection() as conn:
            try:
                with conn.pipeline() as pipe:
                    conn.execute("BEGIN")
                    yield _Tx(conn, self.q, pipe)
                    conn.execute("COMMIT")  # the pipeline's exit waits for it
            except BaseException:
                # A statement failed (the server skipped the rest, COMMIT too, up to the
                # pipeline's sync) or the caller raised: the transaction is still open.
                if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise

    def _late_begin_transaction(self) -> contextlib.AbstractContextManager[_Tx]:
        # BEGIN with the first statement, NOTIFY with COMMIT (_pg_tx.late_begin): a
        # batch publish's transaction, which leaves pipeline mode for its COPY.
        return late_begin(self._pool, self.q)

    def _insert_alone(self, run: NewRun, now: float) -> bool:
        row = self._run_row(run, now)
        row["channel"] = CHANNEL
        # getconn/putconn rather than connection(), whose `with conn` would only COMMIT
        # nothing after an autocommit statement, yet costs as much as the checkout.
        conn = self._pool.getconn()
        try:
            # In autocommit (as the pool's connections are) the statement is its own
            # transaction, and returns once it has committed: one round trip where BEGIN,
            # INSERT, NOTIFY, COMMIT took four.
            # Hands the run to an idle worker if one offered (_pg_handover), with the
            # dearer statement sent only while the last trigger saw an offer.
            offered = self._offers_seen.get(run.env, True)
            got = conn.execute(self.q["insert_run_offered" if offered else "insert_run_alone"],
                               row).fetchone()
            self._offers_seen[run.env] = bool(got and got["offers"])
        finally:
            self._pool.putconn(conn)  # discards it if the statement broke it
        return True

    def _insert_many_alone(self, runs: Sequence[NewRun], now: float) -> bool:
        rows = [self._run_row(r, now) for r in runs]
        try:
            data = orjson.dumps([{c: row[c] for c in _ROW_COLUMNS} for row in rows])
        except TypeError as exc:  # text orjson cannot encode (a lone surrogate): refused
            raise ValueError(f"a run's text cannot be stored: {exc}") from exc
        params = {"rows": data.decode(), "now": now, "channel": CHANNEL}
        conn = self._pool.getconn()
        try:
            conn.execute(self.q["insert_runs_alone"], params)  # autocommit: one round trip
        finally:
            self._pool.putconn(conn)
        return True

    def _insert_plain(self, tx: Any, runs: Sequence[NewRun], now: float) -> None:
        # COPY costs a round trip more than one INSERT, and pipeline mode has no COPY
        # (executemany is pipelined there anyway)
        if len(runs) == 1 or getattr(tx, "pipe", None) is not None:
            super()._insert_plain(tx, runs, now)
            return
        self._copy_runs(tx, runs, now)

    def _copy_runs(self, tx: Any, runs: Iterable[NewRun], now: float) -> None:
        layout = self._copy_layout(tx)
        with tx.conn.cursor() as cur, cur.copy(self.q["copy_runs"]) as copy:
            for chunk in layout.encode(tx.conn, runs, now, self._run_row):
                copy.write(chunk)

    def _insert_tags(self, tx: Any, tags: list[Row]) -> None:
        tx.x(
            "insert_tags",
            envs=[t["env"] for t in tags],
            tags=[t["tag"] for t in tags],
            run_ids=[t["run_id"] for t in tags],
        )

    def _copy_layout(self, tx: Any) -> _CopyLayout:
        """How trigger rows become copy_runs data, with the columns' type oids (binary
        COPY sends values typed) read from the catalog once."""
        if self._copy is None:
            match = re.search(r"\((.*?)\)", self.q["copy_runs"], re.S)
            assert match is not None
            columns = [c.strip() for c in match.group(1).split(",")]
            oids = {r["name"]: r["oid"] for r in tx.q("run_column_types")}
            self._copy = _CopyLayout(columns, [oids[c] for c in columns])
        return self._copy

    def _list(self, values: Sequence[Any]) -> Any:
        return list(values)

    def _raw(self, tx: Any, sql: str, params: Mapping[str, Any]) -> list[Row]:
        cur = tx.conn.execute(to_psycopg(sql), params)
        if getattr(tx, "pipe", None) is not None:
            tx.flush()  # in pipeline mode, description is known once the result came
        return cur.fetchall() if cur.description else []

    def _notify(self, tx: Any, env: str) -> None:
        if isinstance(tx, _LateBeginTx) and tx.begun:
            if env not in tx.notify:
                tx.notify += (env,)  # with COMMIT (_late_begin_transaction)
            return
        tx.x("notify", env=env)

    def _may_claim_and_lock(
        self, tx: Any, worker_id: str, now: float, env: str, names: Sequence[str]
    ) -> tuple[bool, list[Row] | None]:
        # One round trip (in pipeline mode) for what the other backend does one by one,
        # in its order: the worker row FOR SHARE, then the queue rows, then (for a few
        # queues with work, however many the worker serves) their open slots, read after
        # the locks as _claim_from_queue would; a queue not read ahead reads its own there.
        # Queue rows locked by a worker that may not claim are let go at its commit.
        gate = tx.conn.execute(self.q["worker_may_claim"], {"id": worker_id, "now": now})
        locking = tx.conn.execute(self.q["lock_queues_of_runs"],
                                  {"ids": [], "env": env, "names": list(names)})
        opening = tx.conn.execute(self.q["open_slots_of_queues"],
                                  {"env": env, "names": list(names), "ahead": _SLOTS_AHEAD})
        locked = [r for r in locking.fetchall() if r["served"]]
        if not gate.fetchall():
            return False, None
        slots: dict[str, list[Row]] = {}
        for s in opening.fetchall():
            read = slots.setdefault(s["queue"], [])
            if s["ckey"] is not None:
                read.append(s)
        return True, [{**r, "open_slots": slots[r["name"]]} if r["name"] in slots else r
                      for r in locked]

    def _lock_queues_for(
        self, tx: Any, run_ids: Sequence[str], env: str = "", names: Sequence[str] = ()
    ) -> list[Row] | None:
        rows = tx.q("lock_queues_of_runs", ids=list(run_ids), env=env, names=list(names))
        return [r for r in rows if r["served"]]

    def _take_slots(
        self, tx: Any, q: Row, takes: Mapping[str, tuple[int, float]], n: int, window: str
    ) -> None:
        tx.send(
            "take_claimed",
            env=q["env"],
            queue=q["name"],
            ckeys=list(takes),
            ns=[k for k, _ in takes.values()],
            stamps=[st for _, st in takes.values()],
            n=n,
            rate_window=window,
        )

    def _insert_journal_rows(self, tx: Any, rows: list[Row]) -> None:
        # Later rows win, as they would one by one; ON CONFLICT may touch a row only once.
        unique = list({(r["run_id"], r["key"]): r for r in rows}.values())
        if len(unique) == 1:
            super()._insert_journal_rows(tx, unique)
            return
        tx.x("insert_journal_rows", **{col: [r[col] for r in unique] for col in unique[0]})

    def _start_waits(self, tx: Any, ops: list[StartWait], now: float) -> None:
        # Parking a run took ten round trips (four to register its wait, six to suspend
        # it), most of what parking cost: a batch's go in one statement per kind.
        # Later ops win, as they would one by one (ON CONFLICT touches a row once).
        ws = list({(op.run_id, op.key): op for op in ops}.values())
        tx.x(
            "start_waits",
            run_ids=[op.run_id for op in ws],
            keys=[op.key for op in ws],
            kinds=[op.kind for op in ws],
            fingerprints=[op.fingerprint for op in ws],
            wp_ids=[op.waitpoint_id for op in ws],
            wp_kinds=[op.new_waitpoint_kind for op in ws],
            timeouts=[op.timeout_at for op in ws],
            attempts=[op.attempt for op in ws],
            started=[op.started_at for op in ws],
            now=now,
        )

    def _suspend_runs(self, tx: Any, ops: list[EndSegment], now: float) -> None:
        tx.q(
            "suspend_runs",
            ids=[op.run_id for op in ops],
            exec_seconds=[op.exec_seconds for op in ops],
            wait_reasons=[op.wait_reason for op in ops],
            w_runs=[op.run_id for op in ops for _ in op.wait_on],
            w_ids=[wp for op in ops for wp in op.wait_on],
            now=now,
            channel=CHANNEL,
        )

    def _fire_timers(self, tx: Any, now: float) -> int:
        # Two statements, not one: the resume must read run_waits after the waitpoints
        # are locked (see fire_timers in queries.sql).
        fired = [r["id"] for r in tx.q("fire_timers", now=now)]
        if fired:
            tx.q("resume_fired", ids=fired, now=now, channel=CHANNEL)
        return len(fired)

    def _complete_rows(
        self,
        tx: Any,
        ops: Sequence[EndSegment],
        queues: Mapping[tuple[str, str], int],
        slots: Mapping[tuple[str, str, str], int],
        parents: Mapping[str, int],
        now: float,
    ) -> dict[str, int]:
        # One parent goes in the statement; several are locked one by one in id order
        # after it, since an UPDATE ... FROM locks rows in no set order and two batches
        # lowering the same two parents must not lock them in opposite orders.
        one = parents if len(parents) == 1 else {}
        rows = tx.q(
            "complete_runs",
            q_envs=[q[0] for q in queues],
            q_names=[q[1] for q in queues],
            q_ns=list(queues.values()),
            s_envs=[k[0] for k in slots],
            s_queues=[k[1] for k in slots],
            s_keys=[k[2] for k in slots],
            s_ns=list(slots.values()),
            ids=[op.run_id for op in ops],
            outputs=[op.output for op in ops],
            p_ids=list(one),
            p_ns=list(one.values()),
            now=now,
        )
        left = {r["id"]: int(r["pending_children"]) for r in rows}
        if not one:
            left.update(self._children_done(tx, parents))
        return left

    def _lock_for_migration(self, tx: Any) -> None:
        tx.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))

    def _schema_exists(self) -> bool:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT to_regclass('outlast_schema') IS NOT NULL AS e").fetchone()
        return bool(row and row["e"])

    def close(self) -> None:
        self._close_listener()
        self._pool.close()

    # -- worker life locks ----------------------------------------------------------------
    def acquire_life_lock(self, worker_id: str) -> tuple[AdvisoryLock, int | None, str | None]:
        key = random.getrandbits(62) | 1
        return AdvisoryLock(self.url, key, self.direct_url), key, None

    def dead_workers(self, alive: Sequence[dict[str, Any]]) -> list[str]:
        with self._pool.connection() as conn:
            held = {
                r["key"]
                for r in conn.execute(
                    "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks"
                    " WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
                    " AND database = (SELECT oid FROM pg_database"
                    "                 WHERE datname = current_database())"
                ).fetchall()
            }
        return [w["id"] for w in alive if w["lock_key"] is not None and w["lock_key"] not in held]
