"""Defect 2 of issue 16: the session holding a live worker's advisory lock terminated
(pg_terminate_backend), the worker process alive. Before C10 was enforced the worker was
marked dead yet kept claiming under its dead id, and its in-flight runs stayed EXECUTING
under that id for good. Now it finds its lock gone on its next beat, declares itself dead
(its runs requeued), and claims again only under a new identity.

Runs on the shared server: the session terminated is this test's own worker's."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..apps.fault_app import fault_steps
from .common import all_final, begins, wait_until
from .harness import FaultFleet, pg_execute
from .invariant import check_liveness

_LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 1 AND granted
  AND ((classid::bigint << 32) | objid::bigint) = %s
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def test_a_terminated_life_lock_session_leaves_no_run_behind(
    backend: str, fault_fleet: FaultFleet, tmp_path: Path
) -> None:
    if backend != "postgres":
        pytest.skip("advisory-lock sessions are PostgreSQL's")
    fleet = fault_fleet
    ledger = tmp_path / "ledger.jsonl"
    payload = {"ledger": str(ledger), "steps": 3, "sleep": 0.5}
    ids = [h.id for h in fleet.client.batch_trigger(fault_steps, [payload] * 8)]
    proc = fleet.start("--concurrency", "8")
    old = fleet.worker_id(proc)
    wait_until(
        "8 runs in flight",
        lambda: sum(r.status.value == "EXECUTING" for r in fleet.store.get_runs("dev", ids)) == 8,
        20, fleet,
    )
    key = fleet.worker_row(old)["lock_key"]
    (pid,) = pg_execute(fleet.db_url, _LOCK_HOLDER, key)[0]
    assert pg_execute(fleet.db_url, "SELECT pg_terminate_backend(%s)", pid) == [(True,)]
    wait_until("every run to end", all_final(fleet, ids), 30, fleet)
    runs = fleet.store.get_runs("dev", ids)
    assert {r.status.value for r in runs} == {"COMPLETED"}
    assert proc.poll() is None, "the worker process itself never died"
    rows = {w["id"]: w for w in fleet.store.list_workers("dev")}
    assert rows[old]["status"] == "dead"
    assert any(w["pid"] == proc.pid and w["status"] == "alive" for w in rows.values())
    counts = begins(ledger)
    repeats = sum(n - 1 for n in counts.values())
    assert repeats <= 8, f"only the 8 steps in flight may run again: {counts}"
    print(f"life lock terminated: runs 8, lost 0, stuck 0, step repeats {repeats}")
    check_liveness(fleet.db_url, acknowledged=set(ids), repeats=repeats)
