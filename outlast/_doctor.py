"""`outlast doctor`: the checks for what breaks production, each finding with what to do.

A check returns findings: a *problem* (something is broken or will break: the command
exits non-zero) or a *warning* (worth a look). A healthy install has none. Checks read;
they never change anything.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROBLEM = "problem"
WARNING = "warning"

# Leases lapse after 30 s by default and the reaper ticks every second or so: a worker or
# run still held this long after its lease is one nothing is reaping.
REAP_GRACE = 60.0
SKEW_WARNING = 1.0
SKEW_PROBLEM = 5.0
# Connections a process may open: its pool (8), a worker's life lock and its listener.
CONNECTIONS_PER_WORKER = 10
CONNECTIONS_PER_SERVER = 9
NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "davfs", "fuse.rclone",
}


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # problem | warning
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Context:
    """What the checks read: the store (None if unreachable), and this host's view."""

    store: Any
    url: str
    env: str
    wall: Callable[[], float] = time.time
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    mounts: str | None = None  # /proc/mounts text; read when None

    @property
    def sqlite(self) -> bool:
        return self.url.startswith("sqlite:")


CHECKS: list[tuple[str, Callable[[Context], list[Finding]]]] = []


def check(name: str) -> Callable[[Callable[[Context], list[Finding]]],
                                  Callable[[Context], list[Finding]]]:
    def register(fn: Callable[[Context], list[Finding]]) -> Callable[[Context], list[Finding]]:
        CHECKS.append((name, fn))
        return fn
    return register


def run_checks(ctx: Context) -> tuple[list[str], list[Finding]]:
    """Run every check; returns the names run and the findings. Without a database only
    the checks of this host's configuration run."""
    ran: list[str] = []
    findings: list[Finding] = []
    schema = ctx.store is not None and ctx.store.schema_status().exists
    for name, fn in CHECKS:
        if ctx.store is None and name not in HOST_ONLY:
            continue
        if not schema and name not in HOST_ONLY | {"schema", "clock_skew", "idle_transactions"}:
            continue  # nothing to read before `outlast migrate` (the schema check says so)
        ran.append(name)
        try:
            findings += fn(ctx)
        except Exception as exc:  # one check failing must not hide the others' findings
            findings.append(Finding(name, WARNING, f"the check could not run: "
                                    f"{type(exc).__name__}: {exc}".splitlines()[0],
                                    "run `outlast doctor` again; if it persists, report it"))
    return ran, findings


HOST_ONLY = {"dashboard", "sqlite_filesystem"}


# -- the database ----------------------------------------------------------------------------

@check("schema")
def _schema(ctx: Context) -> list[Finding]:
    from .store._schema_base import CONTRACT

    status = ctx.store.schema_status()
    if not status.exists:
        return [Finding("schema", PROBLEM, f"the database has no outlast schema "
                        f"({ctx.store.safe_url})", "run `outlast migrate`")]
    if status.newer:
        return [Finding("schema", PROBLEM, f"the schema (version {status.version}) is newer "
                        f"than this outlast (version {status.code_version}) in a way it "
                        "cannot run on", "upgrade outlast here: pip install -U outlast")]
    found = []
    expand = [m.name for m in status.pending if m.kind != CONTRACT]
    if expand:
        found.append(Finding("schema", PROBLEM, f"migrations not applied: {', '.join(expand)};"
                             " processes of this release refuse to start",
                             "run `outlast migrate`"))
    contract = [m for m in status.pending if m.kind == CONTRACT]
    for m in contract:
        waiting = status.blockers(m)
        found.append(Finding(
            "schema", WARNING, f"contract migration {m.name} is pending"
            + (f"; {len(waiting)} live processes run an older release" if waiting else ""),
            "upgrade the older processes (`outlast migrate --check` lists them), then run "
            "`outlast migrate --contract`"))
    return found


@check("clock_skew")
def _clock(ctx: Context) -> list[Finding]:
    info = ctx.store.doctor_database()
    if info["db_now"] is None:
        return []  # SQLite: the database's clock is this host's
    t0 = ctx.wall()
    info = ctx.store.doctor_database()
    t1 = ctx.wall()
    skew = (t0 + t1) / 2 - float(info["db_now"])
    if abs(skew) < SKEW_WARNING:
        return []
    level = PROBLEM if abs(skew) >= SKEW_PROBLEM else WARNING
    return [Finding("clock_skew", level, f"this host's clock is {abs(skew):.1f} s "
                    f"{'ahead of' if skew > 0 else 'behind'} the database's",
                    "run time synchronisation (chrony or systemd-timesyncd) on this host and "
                    "on the database server; leases are judged by the database's clock, but "
                    "times you pass (wait.until, delays from datetimes) are this host's")]


@check("connections")
def _connections(ctx: Context) -> list[Finding]:
    info = ctx.store.doctor_database()
    if info["max_connections"] is None:
        return []
    processes = ctx.store.schema_status().processes
    workers = sum(1 for p in processes if p.kind == "worker")
    servers = len(processes) - workers
    need = workers * CONNECTIONS_PER_WORKER + servers * CONNECTIONS_PER_SERVER
    room = int(info["max_connections"]) - int(info["reserved"])
    message = (f"{workers} workers and {servers} servers may open up to {need} connections; "
               f"PostgreSQL allows {room} (max_connections {info['max_connections']}, "
               f"{info['connections']} in use now)")
    fix = ("raise max_connections in postgresql.conf (and restart PostgreSQL), run fewer "
           "processes, or put PgBouncer (session mode) in front")
    if need > room:
        return [Finding("connections", PROBLEM, message, fix)]
    if need > 0.8 * room:
        return [Finding("connections", WARNING, message, fix)]
    return []


@check("idle_transactions")
def _idle_transactions(ctx: Context) -> list[Finding]:
    """A session left idle inside a transaction (its process frozen or cut off) keeps its
    row locks, and every worker's claim waits behind them: something must end it."""
    if ctx.sqlite:
        return []
    from .store._pg_session import (
        DEFAULT_IDLE_TX_TIMEOUT,
        IDLE_TX_SETTING,
        idle_tx_timeout,
        read_idle_tx_bounds,
    )

    bounds = read_idle_tx_bounds(ctx.url)
    if bounds.server_ms > 0 or (bounds.pooler_s or 0) > 0:
        return []
    stalls = ("a worker frozen or cut off inside a transaction would stall every worker's "
              "claims until it comes back")
    if not bounds.pooler:
        if idle_tx_timeout(ctx.environ) > 0:
            return []
        raw = ctx.environ.get(IDLE_TX_SETTING)
        return [Finding("idle_transactions", WARNING, f"{IDLE_TX_SETTING}={raw} here and the "
                        f"server sets no idle_in_transaction_session_timeout: {stalls}",
                        f"unset {IDLE_TX_SETTING} (default {DEFAULT_IDLE_TX_TIMEOUT:g} s)")]
    pooler = ("PgBouncer's idle_transaction_timeout is 0" if bounds.pooler_s is not None else
              "PgBouncer's idle_transaction_timeout could not be read (its admin console "
              "refused this user)")
    return [Finding("idle_transactions", WARNING, f"the database URL goes through a pooler, "
                    f"where outlast sets no idle_in_transaction_session_timeout (it would "
                    f"leak to other clients); the server sets none and {pooler}: {stalls}",
                    "set idle_transaction_timeout = 10 in pgbouncer.ini (and list this user "
                    "in its stats_users so doctor can read it), or ALTER ROLE … SET "
                    "idle_in_transaction_session_timeout = '10s'")]


# -- workers and runs ------------------------------------------------------------------------

@check("stale_workers")
def _stale_workers(ctx: Context) -> list[Finding]:
    now = ctx.store.now()
    rows = ctx.store.doctor_stale_workers(ctx.env, now - REAP_GRACE)
    if not rows:
        return []
    names = ", ".join(f"{r['id']} ({r['host']}:{r['pid']}, last heartbeat "
                      f"{now - r['heartbeat_at']:.0f} s ago)" for r in rows[:5])
    return [Finding("stale_workers", PROBLEM, f"{len(rows)} workers are marked alive but "
                    f"stopped heartbeating long ago: {names}",
                    "nothing is reaping: run `outlast server` (or a worker without "
                    "--no-scheduler) against this database; it marks them dead and "
                    "queues their runs again")]


@check("stuck_runs")
def _stuck_runs(ctx: Context) -> list[Finding]:
    rows = ctx.store.doctor_stuck_runs(ctx.env, ctx.store.now() - REAP_GRACE)
    if not rows:
        return []
    ids = ", ".join(r["id"] for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
    return [Finding("stuck_runs", PROBLEM, f"{len(rows)}{'+' if len(rows) >= 100 else ''} "
                    f"runs are held past their worker's lease: {ids}",
                    "run `outlast server` (or a worker without --no-scheduler): its reaper "
                    "queues them again; `outlast runs show ID` explains one")]


@check("paused_queues")
def _paused(ctx: Context) -> list[Finding]:
    return [Finding("paused_queues", WARNING, f"queue {r['name']!r} is paused with "
                    f"{r['queued']} runs waiting",
                    f"resume it when you mean to: `outlast queues resume {r['name']}`")
            for r in ctx.store.doctor_paused_backlog(ctx.env)]


@check("tasks_without_workers")
def _orphan_tasks(ctx: Context) -> list[Finding]:
    queued = ctx.store.doctor_queued_tasks(ctx.env)
    if not queued:
        return []
    served = ctx.store.live_task_ids(ctx.env)
    return [Finding("tasks_without_workers", PROBLEM, f"task {r['task_id']!r} has "
                    f"{r['queued']} queued runs and no live worker in environment "
                    f"{ctx.env!r} serves it",
                    "start a worker whose --app imports it (`outlast worker --app MODULE "
                    f"--env {ctx.env}`)")
            for r in queued if r["task_id"] not in served]


# -- this host's configuration and the servers' ------------------------------------------------

def _public(host: str) -> bool:
    host = host.strip("[]")
    if host in ("localhost", ""):
        return host == ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: reachable as far as it resolves


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@check("dashboard")
def _dashboard(ctx: Context) -> list[Finding]:
    found = []
    fix = ("set OUTLAST_DASHBOARD_PASSWORD for the server and unset OUTLAST_DASHBOARD_OPEN, "
           "or listen on 127.0.0.1 only (--host 127.0.0.1)")
    host = ctx.environ.get("OUTLAST_HOST", "0.0.0.0")
    if (_truthy(ctx.environ.get("OUTLAST_DASHBOARD_OPEN"))
            and not ctx.environ.get("OUTLAST_DASHBOARD_PASSWORD") and _public(host)):
        found.append(Finding("dashboard", PROBLEM, f"this environment opens the dashboard "
                             f"without a password (OUTLAST_DASHBOARD_OPEN) and a server "
                             f"started here listens on {host}", fix))
    if ctx.store is not None:
        for p in ctx.store.schema_status().processes:
            if p.dashboard == "open" and p.listen and _public(p.listen.rpartition(":")[0]):
                found.append(Finding("dashboard", PROBLEM, f"server {p.id} on {p.host} serves "
                                     f"the dashboard without a password on {p.listen}", fix))
    return found


def _filesystem(path: Path, mounts: str) -> str | None:
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].replace("\\040", " ")
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, parts[2]
    return kind


@check("sqlite_filesystem")
def _sqlite_filesystem(ctx: Context) -> list[Finding]:
    if not ctx.sqlite:
        return []
    from .store.sqlite import _path_from_url

    path = _path_from_url(ctx.url).resolve()
    if ctx.mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return []  # not Linux: nothing to read
    else:
        mounts = ctx.mounts
    kind = _filesystem(path, mounts)
    if kind not in NETWORK_FILESYSTEMS:
        return []
    return [Finding("sqlite_filesystem", PROBLEM, f"the SQLite database {path} is on a "
                    f"network filesystem ({kind}): its locks are not reliable there, so two "
                    "workers can both claim a run and the file can be corrupted",
                    "move it to a local disk, or use PostgreSQL for several machines")]
