"""A worker frozen (SIGSTOP) past its lease while its runs execute; a peer takes them over;
then it is thawed (SIGCONT). Fencing (C4): nothing it had in flight commits for a run taken
over, and it goes on under a new identity (C10)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ..apps.fault_app import fault_steps
from ..test_crash import _freeze
from .common import all_final, begins, wait_until
from .harness import FaultFleet
from .invariant import check_liveness

_APPNAME = "outlast-fault-sigstop"


def test_a_frozen_worker_commits_nothing_for_runs_taken_over(
    fault_fleet: FaultFleet, tmp_path: Path
) -> None:
    fleet = fault_fleet
    ledger = tmp_path / "ledger.jsonl"
    payload = {"ledger": str(ledger), "steps": 3, "sleep": 1.0}
    ids = [h.id for h in fleet.client.batch_trigger(fault_steps, [payload] * 4)]
    frozen = fleet.start("--concurrency", "4", "--lease-seconds", "3",
                         env={"PGAPPNAME": _APPNAME})
    frozen_id = fleet.worker_id(frozen)
    wait_until(
        "4 runs under the first worker",
        lambda: [r.worker_id for r in fleet.store.get_runs("dev", ids)] == [frozen_id] * 4,
        20, fleet,
    )
    # Frozen outside a transaction (checked, else retried), as tests/test_crash.py's stale
    # worker is: frozen inside one it would hold SQLite's write lock, and the peer could
    # not claim until it thawed; on PostgreSQL its row locks, until the server ended the
    # session (OUTLAST_PG_IDLE_TX_TIMEOUT: test_frozen_in_transaction.py).
    _freeze(fleet, frozen, "sqlite" if fleet.db_url.startswith("sqlite") else "postgres",
            _APPNAME)
    try:
        fleet.start("--concurrency", "4", "--lease-seconds", "3")
        wait_until(
            "the frozen worker's runs taken over",
            lambda: all(
                r.attempt >= 2 or r.status.is_final for r in fleet.store.get_runs("dev", ids)
            ),
            30, fleet,
        )
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_until("every run to end", all_final(fleet, ids), 30, fleet)
    runs = fleet.store.get_runs("dev", ids)
    assert {r.status.value for r in runs} == {"COMPLETED"}
    # Whatever the thawed worker had in flight was fenced out: every step it journalled
    # belongs to the attempt it ran before the freeze (the peer holds every later one).
    tag = f"@{frozen.pid}"
    for r in runs:
        for e in fleet.store.journal(r.id):
            if e.output and tag in e.output:
                assert e.attempt == 1, f"{r.id}: {e.key} committed by the thawed worker"
    counts = begins(ledger)
    repeats = sum(n - 1 for n in counts.values())
    print(f"sigstop: runs 4, taken over 4, lost 0, stuck 0, step repeats {repeats}")
    assert repeats <= 4, f"only the steps in flight at the freeze may repeat: {counts}"
    check_liveness(fleet.db_url, acknowledged=set(ids), repeats=repeats)
