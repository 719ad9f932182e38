"""A worker reaped while a commit of its own ends one of its runs (C10 against C4): on
PostgreSQL the two transactions overlap. A commit fences the run (its row locked, the
worker read alive) and locks the run's queue before the reaper marks the worker dead; the
reaper must then read the worker's runs under those row locks. Read without them, a run
the commit completed was taken for lost and queued again: it ran twice, and since 0025
(a finished row keeps no claim order) it stayed queued for good. Found by
tests/faults/test_db_restart.py."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from outlast import Retry, task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import Store, WorkerInfo

from .conftest import wait_for_lock_waiter


@task(id="reap-race", retry=Retry(max_attempts=3, min_delay=0.0, max_delay=0.0, jitter=False))
async def reap_race(p: None) -> None:
    return None


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_run_its_commit_completes_while_the_worker_is_reaped_stays_completed(
    store: Store, client: Client, clock: FakeClock, db_url: str
) -> None:
    run_id = client.trigger(reap_race, None).id
    store.register_worker(WorkerInfo(id="worker_a", env="dev", host="test", pid=1,
                                     concurrency=1, tasks=[reap_race.id], lease_seconds=30.0))
    (claim,) = store.claim("worker_a", "dev", {reap_race.queue.name: [reap_race.id]}, 1)
    assert claim.run.id == run_id
    now = clock.now()
    # The commit's locks and writes, in its order (fence, queue rows, the completion),
    # held open: what apply_and_claim has done when the reaper starts.
    with psycopg.connect(db_url) as commit:
        commit.execute("SELECT id FROM runs WHERE id = %s FOR NO KEY UPDATE", (run_id,))
        commit.execute("SELECT 1 FROM queues WHERE env = 'dev' AND name = %s FOR UPDATE",
                       (reap_race.queue.name,))
        commit.execute(
            "UPDATE runs SET status = 'COMPLETED', finished_at = %s, worker_id = NULL, "
            "holds_slot = 0, ready_at = NULL, priority = NULL WHERE id = %s", (now, run_id))
        requeued: list[int] = []
        reaper = threading.Thread(target=lambda: requeued.append(store.reap_worker("worker_a")))
        reaper.start()
        wait_for_lock_waiter(db_url, time.monotonic() + 10, "the reaper never waited")
        commit.commit()
    reaper.join(10)
    assert requeued == [0]
    run = store.get_run("dev", run_id)
    assert run is not None
    assert (run.status, run.attempt) == (RunStatus.COMPLETED, 1)
