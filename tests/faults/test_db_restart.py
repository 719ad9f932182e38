"""Defect 1 of issue 16: PostgreSQL restarted while one worker drains. Every session ends,
the worker's life lock with it; its row may still say alive. Before C10 was enforced,
hundreds of runs could stay EXECUTING under a dead worker for good.

The server restarted here is a private cluster of this session (tests/faults/harness.py),
never the shared one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from outlast.runs import RunStatus

from ..apps.fault_app import fault_noop
from .harness import FaultFleet, PrivatePostgres
from .invariant import check_liveness


def _ended(fleet: FaultFleet) -> int | None:
    try:
        return fleet.ended("fault-noop")
    except Exception:  # the server is restarting
        return None


def _drain_through_restarts(
    pg: PrivatePostgres, tmp_path: Path, runs: int, restarts: int, timeout: float
) -> None:
    url = pg.new_database()
    fleet = FaultFleet(url, tmp_path)
    try:
        ids: list[str] = []
        for i in range(0, runs, 1000):
            batch = [{"n": n} for n in range(i, min(runs, i + 1000))]
            ids += [h.id for h in fleet.client.batch_trigger(fault_noop, batch)]
        fleet.supervised = True
        fleet.start("--concurrency", "10", "--lease-seconds", "5")
        began = time.monotonic()
        deadline = began + timeout
        modes = ["fast", "immediate"]
        for k in range(restarts):
            # Restart at evenly spread points of the drain, while runs are in flight.
            target = runs * (k + 1) // (restarts + 1)
            while (n := _ended(fleet)) is None or n < target:
                assert time.monotonic() < deadline, f"drain stalled at {n}{fleet.tails()}"
                fleet.supervise()
                time.sleep(0.02)
            pg.restart(modes[k % 2])
        while (n := _ended(fleet)) is None or n < runs:
            if time.monotonic() > deadline:
                left = [r for r in fleet.store.get_runs("dev", ids)
                        if r.status != RunStatus.COMPLETED]
                raise AssertionError(
                    f"{runs - (n or 0)} of {runs} runs unfinished after {timeout} s "
                    f"({restarts} restarts); e.g. "
                    f"{[(r.id, r.status, r.worker_id, r.attempt) for r in left[:5]]}"
                    f"{fleet.tails()}"
                )
            fleet.supervise()
            time.sleep(0.05)
        took = time.monotonic() - began
        done = fleet.store.get_runs("dev", ids)
        statuses = {r.status for r in done}
        assert statuses == {RunStatus.COMPLETED}, statuses
        print(
            f"db restart: {runs} runs through {restarts} restarts in {took:.1f} s; "
            f"worker deaths {len(fleet.deaths)}; runs that lost an attempt to a restart "
            f"{sum(r.attempt > 1 for r in done)}; lost 0, stuck 0"
        )
        check_liveness(url, acknowledged=set(ids))
    finally:
        fleet.close()


def test_a_drain_survives_database_restarts(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    _drain_through_restarts(private_pg, tmp_path, runs=2000, restarts=3, timeout=60)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_a_long_drain_survives_twenty_restarts(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    _drain_through_restarts(private_pg, tmp_path, runs=50_000, restarts=20, timeout=1200)
