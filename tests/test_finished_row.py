"""What a finished run's row keeps (issue 18, bytes per finished run), on both backends:
a run that finished on its first attempt drops ``segment_started_at`` (then started_at or
later, and read of a finished run only for the last attempt's start, which is started_at
for attempt 1), a retried run keeps it (its last attempt started then), and the run page's
attempts read the same either way. A completion's JSON null output is stored as NULL, and
reads as None as before; any other output is kept as it was."""

from __future__ import annotations

from typing import Any

from outlast import Retry, task
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server.dashboard._timeline import attempts
from outlast.store.base import Store

TRIES: dict[str, int] = {}  # payload tag -> attempts still to fail
CLOCK: dict[str, FakeClock] = {}


@task(id="finished-row-noop")
async def noop(payload: Any) -> None:
    CLOCK["c"].advance(0.5)


@task(id="finished-row-flaky", retry=Retry(max_attempts=3, min_delay=2.0, max_delay=2.0,
                                           factor=1.0, jitter=False))
async def flaky(payload: dict[str, str]) -> str:
    CLOCK["c"].advance(0.5)
    if TRIES.get(payload["tag"], 0) > 0:
        TRIES[payload["tag"]] -= 1
        raise ConnectionError("503")
    return "ok"


async def test_a_first_attempt_finish_clears_segment_started_at(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    CLOCK["c"] = clock
    handles = [await noop.trigger({"i": i}) for i in range(3)]  # a batch of completions
    TRIES["dead"] = 5
    dead = await flaky.trigger({"tag": "dead"})
    worker = workers(noop, flaky, concurrency=4)
    await worker.run_until_idle()
    for _ in range(3):
        clock.advance(3.0)
        await worker.run_until_idle()
    for h in handles:
        run = client.retrieve(h.id)
        assert run.status == RunStatus.COMPLETED and run.attempt == 1
        assert run.segment_started_at is None
        assert run.started_at is not None and run.finished_at is not None
        assert run.active_seconds > 0
        (a,) = attempts(run, store.journal(run.id), store.events(run.id))
        assert a["start"] == run.started_at and a["end"] == run.finished_at
    with store._transaction() as tx:  # type: ignore[attr-defined]
        raw = {r["id"]: r["output"] for r in store._raw(  # type: ignore[attr-defined]
            tx, "SELECT id, output FROM runs", {})}
    assert all(raw[h.id] is None for h in handles)  # None: NULL, not the text 'null'
    assert all(client.retrieve(h.id).output is None for h in handles)
    failed = client.retrieve(dead.id)
    assert failed.status == RunStatus.FAILED and failed.attempt == 3
    assert failed.segment_started_at is not None  # its third attempt's start


async def test_a_retried_run_keeps_its_last_attempts_start(
    store: Store, client: Client, clock: FakeClock, workers: Any
) -> None:
    CLOCK["c"] = clock
    TRIES["once"] = 1
    handle = await flaky.trigger({"tag": "once"})
    worker = workers(flaky)
    await worker.run_until_idle()
    clock.advance(3.0)
    await worker.run_until_idle()
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED and run.attempt == 2 and run.output == "ok"
    assert run.segment_started_at is not None and run.started_at is not None
    assert run.segment_started_at > run.started_at
    first, second = attempts(run, store.journal(run.id), store.events(run.id))
    assert first["outcome"] == "failed"
    # The second attempt began when it was claimed after the backoff, not when the
    # first one failed: that is what segment_started_at still says.
    assert second["start"] == run.segment_started_at > first["end"]
