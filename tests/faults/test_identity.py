"""The worker side of C10, in process: a worker whose life lock is gone while its row still
says alive declares itself dead (its runs requeued at once), abandons its attempts, and
claims again only under a new identity; a claim that was in flight across the loss is
never started. Both backends, fake clock."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from outlast import Worker, task
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import Claim, Store

from .harness import pg_execute
from .invariant import check_liveness

GATE: dict[str, asyncio.Event] = {}
STARTED: list[int] = []


@task(id="fault-gated")
async def gated(n: int) -> int:
    STARTED.append(n)
    await GATE.setdefault("open", asyncio.Event()).wait()
    return n


def _kill_life_lock(store: Store, db_url: str, worker_id: str) -> None:
    """End the worker's life lock behind its back: the lock file gone (SQLite), the lock's
    session terminated (PostgreSQL; the session is this test's own worker's)."""
    row = next(w for w in store.list_workers("dev") if w["id"] == worker_id)
    if row["lock_path"]:
        os.unlink(row["lock_path"])
        return
    (pid,) = pg_execute(
        db_url,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND ((classid::bigint << 32) | objid::bigint) = %s",
        row["lock_key"],
    )[0]
    pg_execute(db_url, "SELECT pg_terminate_backend(%s)", pid)


async def test_a_worker_whose_life_lock_is_gone_comes_back_as_another(
    store: Store, client: Client, db_url: str
) -> None:
    """Defect 2: before, nothing checked the lock from the worker's side; it went on under
    an identity peers had declared dead (or would), its runs beyond any reaper's reach."""
    GATE.clear()
    STARTED.clear()
    ids = [client.trigger(gated, n).id for n in range(2)]
    worker = Worker(store, tasks={gated.id: gated}, env="dev", concurrency=2, scheduler=False)
    await worker.start(background=False)
    try:
        old = worker.id
        await worker._claim()
        assert sorted(STARTED) == [0, 1]
        _kill_life_lock(store, db_url, old)
        await worker.beat()  # finds the lock gone: declares itself dead, registers anew
        assert worker.id != old, "still under the identity whose lock is gone"
        assert not worker._lost
        rows = {w["id"]: w["status"] for w in store.list_workers("dev")}
        assert rows[old] == "dead" and rows[worker.id] == "alive"
        runs = store.get_runs("dev", ids)
        assert [(r.status, r.attempt) for r in runs] == [(RunStatus.QUEUED, 2)] * 2
        GATE["open"].set()
        await worker.run_until_idle()
        runs = store.get_runs("dev", ids)
        assert [(r.status, r.attempt) for r in runs] == [(RunStatus.COMPLETED, 2)] * 2
    finally:
        GATE["open"].set()
        await worker.shutdown()
    check_liveness(db_url)


async def test_a_claim_in_flight_across_a_loss_is_never_started(
    store: Store, client: Client, db_url: str
) -> None:
    GATE.clear()
    STARTED.clear()
    GATE["open"] = asyncio.Event()
    GATE["open"].set()
    ids = [client.trigger(gated, n).id for n in range(3)]
    worker = Worker(store, tasks={gated.id: gated}, env="dev", concurrency=3, scheduler=False)
    await worker.start(background=False)
    real = store.apply_and_claim
    loop = asyncio.get_running_loop()
    lost_midway: list[str] = []

    def claim_then_lose(*args: Any, **kwargs: Any) -> tuple[list[bool], list[Claim]]:
        ok, claims = real(*args, **kwargs)
        if claims and not lost_midway:
            # The identity is lost while this claim's commit is on its way back.
            lost_midway.append(worker.id)
            loop.call_soon_threadsafe(lambda: worker._lose_identity(lock_gone=True))
        return ok, claims

    store.apply_and_claim = claim_then_lose  # type: ignore[method-assign]
    try:
        await worker._claim()
        assert worker._recovery is not None
        await worker._recovery
        assert lost_midway and worker.id != lost_midway[0]
        assert STARTED == [], "a run claimed across the loss was started"
        await worker.run_until_idle()
        runs = store.get_runs("dev", ids)
        assert {r.status for r in runs} == {RunStatus.COMPLETED}
        assert sorted(STARTED) == [0, 1, 2]
    finally:
        store.apply_and_claim = real  # type: ignore[method-assign]
        await worker.shutdown()
    check_liveness(db_url)
