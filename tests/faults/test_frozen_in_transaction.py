"""PostgreSQL: a worker frozen (SIGSTOP) INSIDE a transaction that holds the queue row
locks its peer's claim needs. The server ends the frozen session once it has idled in
the transaction for OUTLAST_PG_IDLE_TX_TIMEOUT (2 s here), rolling it back, so the peer
goes on claiming and completing runs (C10): a lapsed lease frees no row lock, only the
end of the session does. Kept frozen until its lease lapsed and its runs were taken over,
then thawed (SIGCONT), the worker finds its connection gone and its identity fenced (C4),
and carries on under a new one.

SQLite has no such bound: a process frozen inside a write transaction holds the
database's write lock until it thaws (docs/explanation/guarantees.md), so this test runs
on PostgreSQL only."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..apps.fault_app import fault_steps
from .common import wait_until
from .harness import FaultFleet, pg_execute
from .invariant import check_liveness

_FROZEN = "outlast-fault-frozen-tx"
_PEER = "outlast-fault-frozen-peer"
_IDLE_TX = 2.0
# The peer must be claiming again this soon after the freeze: the timeout, plus room for
# a busy machine.
_BOUND = _IDLE_TX + 8.0
_LEASE = 3.0  # the frozen worker's


@pytest.fixture
def backend() -> str:
    return "postgres"


class _Feeder:
    """Steady work: a batch of quick one-step runs every 50 ms from a thread, so both
    workers claim and commit all the time; a run's output names the process that ran it."""

    def __init__(self, fleet: FaultFleet, ledger: Path) -> None:
        self.ids: list[str] = []
        self._fleet = fleet
        self._payload = {"ledger": str(ledger), "steps": 1, "sleep": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while not self._stop.wait(0.05):
            handles = self._fleet.client.batch_trigger(fault_steps, [self._payload] * 20)
            self.ids.extend(h.id for h in handles)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(10)
        return list(self.ids)


@pytest.fixture
def feeder(fault_fleet: FaultFleet, tmp_path: Path) -> Iterator[_Feeder]:
    f = _Feeder(fault_fleet, tmp_path / "ledger.jsonl")
    try:
        yield f
    finally:
        f.stop()


def _backends(url: str, appname: str, state: str) -> list[int]:
    return [r[0] for r in pg_execute(
        url, "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = %s",
        appname, state)]


def _blocked_by(url: str, holders: list[int]) -> bool:
    """Whether a peer's backend waits for a lock one of ``holders`` holds."""
    return bool(pg_execute(
        url, "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        " AND pg_blocking_pids(pid) && %s::int[]", _PEER, holders))


def _freeze_inside(fleet: FaultFleet, proc: subprocess.Popen[bytes],
                   timeout: float) -> list[int]:
    """SIGSTOP ``proc`` while its backend sits idle in a transaction that blocks the peer's
    claim, retrying until it does; the frozen backends' pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.05)
        holders = _backends(fleet.db_url, _FROZEN, "idle in transaction")
        waited = time.monotonic() + 0.5
        while holders and time.monotonic() < waited:
            if _blocked_by(fleet.db_url, holders):
                return holders
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.03)
    raise AssertionError(f"could not freeze the worker inside a transaction{fleet.tails()}")


def _completed_by(url: str, proc: subprocess.Popen[bytes]) -> int:
    return int(pg_execute(url, "SELECT count(*) FROM runs WHERE status = 'COMPLETED'"
                          " AND output::text LIKE %s", f'%@{proc.pid}"%')[0][0])


def test_a_worker_frozen_inside_a_transaction_stalls_its_peer_only_briefly(
    fault_fleet: FaultFleet, feeder: _Feeder
) -> None:
    fleet = fault_fleet
    env = {"OUTLAST_PG_IDLE_TX_TIMEOUT": str(_IDLE_TX)}
    frozen = fleet.start("--concurrency", "8", "--lease-seconds", str(_LEASE),
                         env={**env, "PGAPPNAME": _FROZEN})
    frozen_id = fleet.worker_id(frozen)
    peer = fleet.start("--concurrency", "8", env={**env, "PGAPPNAME": _PEER})
    wait_until("both workers to complete runs",
               lambda: _completed_by(fleet.db_url, frozen) > 0
               and _completed_by(fleet.db_url, peer) > 0, 30, fleet)

    holders = _freeze_inside(fleet, frozen, 15)
    frozen_at = time.monotonic()
    try:
        done_at_freeze = _completed_by(fleet.db_url, peer)
        wait_until("the server to end the frozen transaction",
                   lambda: not set(holders) & set(_backends(
                       fleet.db_url, _FROZEN, "idle in transaction")), _BOUND, fleet)
        ended = time.monotonic() - frozen_at
        wait_until("the peer to complete runs again",
                   lambda: _completed_by(fleet.db_url, peer) >= done_at_freeze + 20,
                   _BOUND - (time.monotonic() - frozen_at), fleet)
        resumed = time.monotonic() - frozen_at
        wait_until("the frozen worker to be reaped past its lease",
                   lambda: fleet.worker_row(frozen_id)["status"] == "dead", 20, fleet)
        frozen_done = _completed_by(fleet.db_url, frozen)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    print(f"frozen inside a transaction (idle_in_transaction_session_timeout {_IDLE_TX:g} s):"
          f" session ended after {ended:.2f} s, peer completing runs after {resumed:.2f} s")
    # The freeze is found a little after it began: allow for that, not for an earlier end.
    assert ended >= _IDLE_TX - 0.6, "the frozen session ended before its timeout"

    # Thawed, the worker meets its ended session and, retrying, its lapsed identity: it
    # comes back under a new one and goes on with new work (whatever it held at the
    # freeze was taken over, and its commits for those runs are refused: C4).
    assert fleet.worker_id(frozen) != frozen_id
    wait_until("the thawed worker to complete new runs",
               lambda: _completed_by(fleet.db_url, frozen) >= frozen_done + 20, 20, fleet)
    assert frozen.poll() is None and peer.poll() is None, fleet.tails()
    acknowledged = feeder.stop()
    wait_until("every run to end", lambda: int(pg_execute(
        fleet.db_url, "SELECT count(*) FROM runs WHERE status <> 'COMPLETED'")[0][0]) == 0,
        30, fleet)
    check_liveness(fleet.db_url, acknowledged=set(acknowledged))
