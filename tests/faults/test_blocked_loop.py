"""Defect 3 of issue 16: task code blocking the event loop past the lease (lease 3 s, an
async task calling time.sleep(6)). Before, heartbeats ran on the loop: the lease lapsed,
the worker was reaped while its runs still executed, and runs stayed EXECUTING under the
dead worker. Now the lease is renewed from a thread of its own, so a blocked loop costs
time and nothing else: every run completes on its first attempt, no step body repeats."""

from __future__ import annotations

from pathlib import Path

from ..apps.fault_app import fault_block
from .common import all_final, begins, wait_until
from .harness import FaultFleet
from .invariant import check_liveness


def test_a_loop_blocked_past_the_lease_loses_nothing(
    fault_fleet: FaultFleet, tmp_path: Path
) -> None:
    fleet = fault_fleet
    ledger = tmp_path / "ledger.jsonl"
    payload = {"ledger": str(ledger), "seconds": 6}
    ids = [h.id for h in fleet.client.batch_trigger(fault_block, [payload] * 2)]
    # Its own reaper, once the loop runs again, would find a lapsed lease and reap it.
    fleet.start("--concurrency", "2", "--lease-seconds", "3")
    wait_until("both runs to end", all_final(fleet, ids), 40, fleet)
    runs = fleet.store.get_runs("dev", ids)
    counts = begins(ledger)
    repeats = sum(n - 1 for n in counts.values())
    print(
        f"blocked loop: runs 2, attempts {[r.attempt for r in runs]}, lost 0, stuck 0, "
        f"step repeats {repeats}"
    )
    assert [r.status.value for r in runs] == ["COMPLETED", "COMPLETED"]
    assert [r.attempt for r in runs] == [1, 1], "the blocked worker lost its lease"
    assert repeats == 0, counts
    check_liveness(fleet.db_url, acknowledged=set(ids), repeats=repeats)
