"""A network partition between a worker and PostgreSQL (tests/faults/proxy.py cuts every
connection and refuses new ones) for longer than the lease, while steps run; then the
network comes back. The worker's lock session died with the cut: it declares itself dead,
comes back under a new identity, and every run finishes; only step bodies in flight
across the cut run again."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from ..apps.fault_app import fault_steps
from .common import all_final, begins, first_begin, wait_until
from .harness import FaultFleet
from .invariant import check_liveness
from .proxy import Proxy


def test_a_partition_past_the_lease_loses_nothing(
    backend: str, fault_fleet: FaultFleet, tmp_path: Path
) -> None:
    if backend != "postgres":
        pytest.skip("a network partition needs a network database")
    fleet = fault_fleet
    ledger = tmp_path / "ledger.jsonl"
    payload = {"ledger": str(ledger), "steps": 4, "sleep": 0.5}
    ids = [h.id for h in fleet.client.batch_trigger(fault_steps, [payload] * 6)]
    dbname = fleet.db_url.rpartition("/")[2]
    with Proxy("127.0.0.1", int(fleet.db_url.split(":")[2].split("/")[0])) as proxy:
        # The worker reaches the database through the proxy; the test, directly.
        proc = fleet.spawn(
            "--concurrency", "6", "--lease-seconds", "3", "--database-url", proxy.url(dbname)
        )
        wait_until("a step of every run to begin", lambda: len(begins(ledger)) >= 6, 20, fleet)
        proxy.cut()
        cut_at = time.time()
        time.sleep(5)  # past the 3 s lease
        proxy.restore()
        restored_at = time.time()
        wait_until("every run to end", all_final(fleet, ids), 40, fleet)
    del proxy
    gc.collect()  # a socket the proxy failed to close warns here, not in a later test
    runs = fleet.store.get_runs("dev", ids)
    assert {r.status.value for r in runs} == {"COMPLETED"}
    assert proc.poll() is None, "the worker recovered without a restart"
    counts = begins(ledger)
    firsts = first_begin(ledger)
    repeated = {k: n for k, n in counts.items() if n > 1}
    late = {k: n for k, n in repeated.items() if firsts[k] > restored_at}
    assert not late, f"steps begun after the partition ran more than once: {late}"
    repeats = sum(n - 1 for n in repeated.values())
    print(
        f"partition: runs 6, cut {restored_at - cut_at:.1f} s, lost 0, stuck 0, "
        f"step repeats {repeats} (all across the cut)"
    )
    check_liveness(fleet.db_url, acknowledged=set(ids), repeats=repeats)
