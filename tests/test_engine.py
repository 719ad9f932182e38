"""The durable engine's contract, on real SQLite and real PostgreSQL.

Memoized steps (C2), retries on the platform's clock, typed replay, stable step
idempotency keys (C3), non-determinism detection (C8), max_duration, logs and metadata,
values that cannot be stored, and fencing of a worker whose lease lapsed (C4).

Timers run on the injected FakeClock and ``Worker.run_until_idle()``; nothing sleeps to
wait for a timer except the max_duration test, whose limit is an asyncio timer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
import pytest

from outlast import AbortRun, Retry, Worker, current_run, logger, metadata, step, task, wait
from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store.base import EndSegment, LogLine, SetMetadata, StepDone, Store, WorkerInfo
from outlast.tasks import Task
from outlast.testing import OutlastEnv

# What task code did, counted outside the platform: the ground truth for "ran once".
LEDGER: Counter[str] = Counter()
SEEN: list[Any] = []
GATES: dict[str, asyncio.Event] = {}

NO_DELAY = Retry(max_attempts=3, factor=1.0, min_delay=0.0, max_delay=0.0, jitter=False)


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    LEDGER.clear()
    SEEN.clear()
    GATES.clear()


def attempt_failures(store: Store, run_id: str) -> list[int | None]:
    return [e.attempt for e in store.events(run_id) if e.kind == "attempt_failed"]


# -- memoized steps (C2) ---------------------------------------------------------------------


def charge_card(amount: int) -> str:
    LEDGER["charge"] += 1
    return f"ch_{amount}"


async def provision_account(charge_id: str) -> str:
    LEDGER["provision"] += 1
    await asyncio.sleep(0)
    return f"acct_for_{charge_id}"


def flaky_provision(charge_id: str, fail_times: int) -> str:
    LEDGER["provision"] += 1
    if LEDGER["provision"] <= fail_times:
        raise ConnectionError("provisioning API answered 503")
    return f"acct_for_{charge_id}"


def send_welcome(account: str) -> bool:
    LEDGER["email"] += 1
    return True


@task(id="eng-signup")
async def signup(payload: dict[str, int]) -> dict[str, Any]:
    charge = await step.run("charge", charge_card, payload["amount"])
    account = await step.run("provision", provision_account, charge)
    sent = await step.run("email", send_welcome, account)
    return {"charge": charge, "account": account, "sent": sent}


@pytest.mark.outlast(tasks=[signup])
async def test_multi_step_run_completes_each_step_once(outlast_env: OutlastEnv) -> None:
    run = await outlast_env.run(signup, {"amount": 42})
    assert outlast_env.worker.executed == 1

    assert run.status == RunStatus.COMPLETED
    assert run.attempts == 1
    assert run.output == {"charge": "ch_42", "account": "acct_for_ch_42", "sent": True}
    assert LEDGER == {"charge": 1, "provision": 1, "email": 1}
    journal = run.journal
    assert sorted(e.key for e in journal) == ["charge", "email", "provision"]
    assert {e.status for e in journal} == {"done"}
    assert run.steps == ["charge", "provision", "email"]


# -- retries on the platform's clock ----------------------------------------------------------

BACKOFF = Retry(max_attempts=5, factor=2.0, min_delay=1.0, max_delay=3.0, jitter=False)


@task(id="eng-signup-flaky", retry=BACKOFF)
async def signup_flaky(payload: dict[str, int]) -> str:
    charge = await step.run("charge", charge_card, payload["amount"])
    account = await step.run("provision", flaky_provision, charge, payload["fail"])
    await step.run("email", send_welcome, account)
    return account


def test_retry_delays_are_exact_without_jitter() -> None:
    assert [BACKOFF.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


async def test_failed_step_is_retried_on_backoff_and_completed_steps_are_not_rerun(
    store: Store, client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    handle = await signup_flaky.trigger({"amount": 7, "fail": 3})
    worker = workers(signup_flaky)
    assert await worker.run_until_idle() == 1  # attempt 1: charge ok, provision fails

    # min_delay * factor**(n-1), capped at max_delay: 1 s, 2 s, then 3 s (not 4 s).
    for failed, delay in enumerate([1.0, 2.0, 3.0], start=1):
        run = client.retrieve(handle.id)
        assert run.status == RunStatus.QUEUED
        assert run.attempt == failed + 1
        assert run.available_at == pytest.approx(clock.now() + delay)
        assert run.error is not None and "503" in run.error["message"]
        clock.advance(delay - 0.05)
        assert await worker.run_until_idle() == 0, "retried before its backoff elapsed"
        clock.advance(0.1)
        assert await worker.run_until_idle() == 1

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED
    assert run.attempt == 4
    assert run.output == "acct_for_ch_7"
    # The card was charged once; the failed step ran again until it succeeded.
    assert LEDGER == {"charge": 1, "provision": 4, "email": 1}
    assert attempt_failures(store, handle.id) == [1, 2, 3]
    step_errors = [e for e in store.events(handle.id) if e.kind == "step_failed"]
    assert len(step_errors) == 3
    assert all("'provision'" in (e.message or "") for e in step_errors)
    charge = next(e for e in store.journal(handle.id) if e.key == "charge")
    assert charge.attempt == 1  # recorded by the first attempt, replayed by the others


def decline_card(amount: int) -> str:
    LEDGER["charge"] += 1
    raise AbortRun("card declined")


@task(id="eng-abort", retry=Retry(max_attempts=5, min_delay=0.0, max_delay=0.0, jitter=False))
async def abort_task(payload: dict[str, int]) -> str:
    await step.run("charge", decline_card, payload["amount"])
    LEDGER["after"] += 1
    return "unreachable"


@pytest.mark.outlast(tasks=[abort_task])
async def test_abort_run_stops_retries(outlast_env: OutlastEnv) -> None:
    run = await outlast_env.run(abort_task, {"amount": 5})
    assert outlast_env.worker.executed == 1
    await outlast_env.advance(3600)
    assert outlast_env.worker.executed == 1

    assert run.status == RunStatus.FAILED
    assert run.attempts == 1
    assert run.error is not None
    assert run.error["code"] == "aborted"
    assert run.error["message"] == "card declined"
    assert LEDGER == {"charge": 1}
    assert attempt_failures(outlast_env.store, run.id) == [1]


@task(id="eng-always-fails", retry=Retry(max_attempts=3, factor=2.0, min_delay=1.0, jitter=False))
async def always_fails(payload: dict[str, Any]) -> None:
    LEDGER["body"] += 1
    raise ValueError("boom")


async def test_task_that_always_raises_fails_after_max_attempts(
    store: Store, client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    handle = await always_fails.trigger({})
    worker = workers(always_fails)
    for _ in range(10):
        await worker.run_until_idle()
        if client.retrieve(handle.id).is_final:
            break
        clock.advance(10)

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.FAILED
    assert run.attempt == 3
    assert LEDGER["body"] == 3
    assert run.error is not None
    assert run.error["code"] == "task_error"
    assert run.error["type"] == "ValueError"
    assert run.error["message"] == "boom"
    assert "raise ValueError" in run.error["traceback"]
    assert attempt_failures(store, handle.id) == [1, 2, 3]
    clock.advance(3600)
    assert await worker.run_until_idle() == 0


# -- typed replay and step idempotency keys ---------------------------------------------------


@dataclass
class Invoice:
    number: str
    total: float


class Account(pydantic.BaseModel):
    id: str
    plan: str


def make_invoice() -> Invoice:
    LEDGER["invoice"] += 1
    return Invoice(number="INV-1", total=12.5)


def make_account() -> Account:
    LEDGER["account"] += 1
    return Account(id="acct_1", plan="pro")


async def make_plain() -> dict[str, Any]:
    LEDGER["plain"] += 1
    return {"n": 1, "items": [1, 2], "nested": {"ok": True}}


def fail_first_time() -> int:
    LEDGER["flaky"] += 1
    if LEDGER["flaky"] == 1:
        raise RuntimeError("transient")
    return LEDGER["flaky"]


@task(id="eng-typed", retry=NO_DELAY)
async def typed_steps(payload: dict[str, Any]) -> str:
    invoice = await step.run("invoice", make_invoice)
    account = await step.run("account", make_account)
    plain = await step.run("plain", make_plain)
    SEEN.append((current_run().attempt, invoice, account, plain))
    await step.run("flaky", fail_first_time)
    return "ok"


async def test_replayed_steps_return_their_annotated_types(
    client: Client, workers: Callable[..., Worker]
) -> None:
    handle = await typed_steps.trigger({})
    await workers(typed_steps).run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.COMPLETED

    assert [s[0] for s in SEEN] == [1, 2]
    _, invoice, account, plain = SEEN[1]  # attempt 2: every value came from the journal
    assert type(invoice) is Invoice and invoice == Invoice(number="INV-1", total=12.5)
    assert type(account) is Account and account == Account(id="acct_1", plan="pro")
    assert plain == {"n": 1, "items": [1, 2], "nested": {"ok": True}}
    assert SEEN[0][1:] == SEEN[1][1:]
    assert LEDGER == {"invoice": 1, "account": 1, "plain": 1, "flaky": 2}


def keyed_charge() -> str:
    key = step.idempotency_key()
    SEEN.append(key)
    if len(SEEN) == 1:
        raise ConnectionError("timeout talking to the payment API")
    return key


async def keyed_send() -> str:
    return step.idempotency_key()


@task(id="eng-step-keys", retry=NO_DELAY)
async def step_keys(payload: dict[str, Any]) -> list[str]:
    a = await step.run("charge", keyed_charge)
    b = await step.run("send", keyed_send)
    c = await step.run("send", keyed_send)
    return [a, b, c]


async def test_step_idempotency_key_is_stable_and_repeats_are_numbered(
    store: Store, client: Client, workers: Callable[..., Worker]
) -> None:
    handle = await step_keys.trigger({})
    await workers(step_keys).run_until_idle()

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED
    assert run.attempt == 2
    rid = handle.id
    keys = list(SEEN)
    assert keys == [f"{rid}:charge", f"{rid}:charge"]  # same key on both attempts
    assert run.output == [f"{rid}:charge", f"{rid}:send", f"{rid}:send#2"]
    assert sorted(e.key for e in store.journal(rid)) == ["charge", "send", "send#2"]


# -- durable sleep and non-determinism (C8) ---------------------------------------------------


def step_a(n: int) -> int:
    LEDGER["a"] += 1
    return n


def step_b() -> str:
    LEDGER["b"] += 1
    return "b"


@task(id="eng-nd")
async def nd_original(payload: dict[str, Any]) -> str:
    await step.run("a", step_a, 1)
    await wait.sleep(3600)
    await step.run("b", step_b)
    return "done"


@task(id="eng-nd-kind")
async def nd_other_kind(payload: dict[str, Any]) -> str:
    await step.run("a", step_a, 1)
    await step.run("sleep", step_b)  # a step under the key the recorded sleep holds
    return "done"


@task(id="eng-nd-new-first")
async def nd_new_first(payload: dict[str, Any]) -> str:
    await step.run("setup", step_b)  # new work before the recorded 'a' and 'sleep'
    await step.run("a", step_a, 1)
    await wait.sleep(3600)
    return "done"


@task(id="eng-nd-slow-new-first")
async def nd_slow_new_first(payload: dict[str, Any]) -> str:
    for _ in range(50):  # an awaited call that takes many loop turns
        await asyncio.sleep(0)
    await step.run("setup", step_b)  # then new work before the recorded 'a' and 'sleep'
    await step.run("a", step_a, 1)
    await wait.sleep(3600)
    return "done"


@task(id="eng-nd-thread-new-first")
async def nd_thread_new_first(payload: dict[str, Any]) -> str:
    await asyncio.to_thread(time.sleep, 0.05)  # an awaited thread call
    for _ in range(50):  # and an awaited call that takes many loop turns
        await asyncio.sleep(0)
    await step.run("setup", step_b)  # then new work before the recorded 'a' and 'sleep'
    await step.run("a", step_a, 1)
    await wait.sleep(3600)
    return "done"


@task(id="eng-nd-slow-branch")
async def nd_slow_branch(payload: dict[str, Any]) -> str:
    async def recorded() -> None:
        for _ in range(50):  # an awaited call that takes many loop turns
            await asyncio.sleep(0)
        await step.run("a", step_a, 1)
        await wait.sleep(3600)

    async def new() -> None:
        await step.run("setup", step_b)

    await asyncio.gather(recorded(), new())
    return "done"


@task(id="eng-nd-args")
async def nd_other_args(payload: dict[str, Any]) -> str:
    await step.run("a", step_a, 2)  # recorded with 1
    await wait.sleep(3600)
    return "done"


async def _suspend_at_sleep(
    client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> str:
    handle = await nd_original.trigger({})
    assert await workers(nd_original).run_until_idle() == 1
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.WAITING
    assert run.worker_id is None
    assert LEDGER == {"a": 1}
    clock.advance(3601)
    return handle.id


async def test_durable_sleep_resumes_without_rerunning_steps(
    client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    handle = await nd_original.trigger({})
    worker = workers(nd_original)
    assert await worker.run_until_idle() == 1
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(3599)
    assert await worker.run_until_idle() == 0
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(2)
    assert await worker.run_until_idle() == 1
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED
    assert run.output == "done"
    assert LEDGER == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    ("changed", "names"),
    [
        (nd_other_kind, ["'sleep'", "recorded a sleep", "asks for a step"]),
        (nd_new_first, ["'setup'", "'a'", "'sleep'"]),
        (nd_slow_new_first, ["'setup'", "'a'", "'sleep'"]),
        (nd_thread_new_first, ["'setup'", "'a'", "'sleep'"]),
        (nd_other_args, ["'a'", "other arguments"]),
    ],
    ids=["other-kind", "new-work-first", "slow-new-work-first", "thread-new-work-first",
         "other-args"],
)
async def test_code_that_disagrees_with_the_journal_fails_the_run(
    client: Client,
    clock: FakeClock,
    workers: Callable[..., Worker],
    changed: Task[Any, Any],
    names: list[str],
) -> None:
    run_id = await _suspend_at_sleep(client, clock, workers)
    # A redeploy: the same task id is now served by other code.
    swapped = dataclasses.replace(changed, id=nd_original.id, queue=nd_original.queue)
    assert await workers(swapped).run_until_idle() == 1

    run = client.retrieve(run_id)
    assert run.status == RunStatus.FAILED
    assert run.attempt == 1  # not retried: replaying again would fail the same way
    assert run.error is not None
    assert run.error["code"] == "non_determinism"
    for name in names:
        assert name in run.error["message"]
    assert LEDGER == {"a": 1}  # nothing ran against the wrong journal


async def test_a_branch_slow_to_reach_its_recorded_call_still_replays(
    client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    # The same code with the 50 turns taken out replays: whether a run replays must not
    # depend on how many loop turns an awaited call takes.
    run_id = await _suspend_at_sleep(client, clock, workers)
    swapped = dataclasses.replace(nd_slow_branch, id=nd_original.id, queue=nd_original.queue)
    assert await workers(swapped).run_until_idle() == 1
    run = client.retrieve(run_id)
    assert run.error is None
    assert run.status == RunStatus.COMPLETED
    assert LEDGER == {"a": 1, "b": 1}


@task(id="eng-slow-sibling-of-a-wait")
async def slow_sibling_of_a_wait(payload: dict[str, Any]) -> str:
    async def slow_step() -> None:
        await wait.sleep(10)
        for _ in range(50):  # an awaited call that takes many loop turns
            await asyncio.sleep(0)
        await step.run("b", step_b)

    await asyncio.gather(wait.sleep(3600), slow_step())
    return "done"


async def test_a_run_suspends_only_once_a_slow_sibling_branch_has_reached_its_step(
    store: Store, client: Client, clock: FakeClock, workers: Callable[..., Worker]
) -> None:
    # On the resume after 10 s, one branch blocks at once on the hour's recorded sleep
    # while its sibling is still on its way to a step: the run suspends once the loop is
    # quiet, not after a count of turns that would cut the sibling off and leave its step
    # for after the hour.
    handle = await slow_sibling_of_a_wait.trigger({})
    worker = workers(slow_sibling_of_a_wait)
    assert await worker.run_until_idle() == 1
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(11)
    assert await worker.run_until_idle() == 1
    run = client.retrieve(handle.id)
    assert run.status == RunStatus.WAITING
    assert LEDGER == {"b": 1}
    assert sorted(e.key for e in store.journal(handle.id)) == ["b", "sleep", "sleep#2"]


# -- max_duration ------------------------------------------------------------------------------


@task(id="eng-slow", max_duration=0.3, retry=NO_DELAY)
async def slow(payload: dict[str, Any]) -> None:
    LEDGER["started"] += 1
    await asyncio.sleep(30)
    LEDGER["finished"] += 1


async def test_max_duration_times_the_run_out(
    store: Store, client: Client, workers: Callable[..., Worker]
) -> None:
    handle = await slow.trigger({})
    t0 = time.monotonic()
    await workers(slow).run_until_idle(max_seconds=20)
    elapsed = time.monotonic() - t0

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.TIMED_OUT
    assert 0.25 < elapsed < 5.0
    assert run.attempt == 1
    assert run.error is not None and run.error["code"] == "max_duration_exceeded"
    assert LEDGER == {"started": 1}
    assert attempt_failures(store, handle.id) == [1]


# -- values that cannot be stored ---------------------------------------------------------------


@task(id="eng-unstorable-output", retry=NO_DELAY)
async def unstorable_output(payload: dict[str, Any]) -> Any:
    LEDGER["body"] += 1
    return object()


def unstorable_value() -> Any:
    LEDGER["step"] += 1
    return object()


@task(id="eng-unstorable-step", retry=NO_DELAY)
async def unstorable_step(payload: dict[str, Any]) -> str:
    LEDGER["body"] += 1
    await step.run("make", unstorable_value)
    return "unreachable"


@pytest.mark.parametrize("the_task", [unstorable_output, unstorable_step], ids=["output", "step"])
async def test_unstorable_value_fails_clearly_without_retry(
    client: Client, workers: Callable[..., Worker], the_task: Task[Any, Any]
) -> None:
    handle = await the_task.trigger({})
    await workers(the_task).run_until_idle()

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error["code"] == "serialization_error"
    assert "cannot store a value of type object as JSON" in run.error["message"]
    assert LEDGER["body"] == 1


# -- logs and metadata -------------------------------------------------------------------------


@task(id="eng-observe")
async def observe(payload: dict[str, str]) -> int:
    logger.info("page exported", page=3)
    metadata.set("progress", 0.5)
    metadata.increment("pages")
    metadata.increment("pages", 2)
    await GATES[payload["gate"]].wait()
    logger.warning("almost done")
    metadata.set("progress", 1.0)
    return 3


async def test_logs_and_metadata_are_stored_and_readable_while_running(
    store: Store, client: Client, workers: Callable[..., Worker]
) -> None:
    gate = GATES["observe"] = asyncio.Event()
    handle = await observe.trigger({"gate": "observe"})
    running = asyncio.create_task(workers(observe).run_until_idle(max_seconds=20))
    try:
        deadline = time.monotonic() + 10
        while True:
            run = await asyncio.to_thread(client.retrieve, handle.id)
            if run.metadata.get("pages") == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        # Seen from outside while the task is still parked on its gate.
        assert run.status == RunStatus.EXECUTING
        assert run.metadata == {"progress": 0.5, "pages": 3}
        live = [(e.level, e.message, e.data) for e in store.events(handle.id) if e.kind == "log"]
        assert live == [("info", "page exported", {"page": 3})]
    finally:
        gate.set()
        await running

    run = client.retrieve(handle.id)
    assert run.status == RunStatus.COMPLETED
    assert run.metadata == {"progress": 1.0, "pages": 3}
    logs = [(e.level, e.message, e.data, e.attempt) for e in store.events(handle.id)
            if e.kind == "log"]
    assert logs == [("info", "page exported", {"page": 3}, 1), ("warning", "almost done", None, 1)]


# -- fencing (C4) ------------------------------------------------------------------------------


@task(id="eng-fenced")
async def fenced(payload: dict[str, Any]) -> None:
    return None


def _register(store: Store, worker_id: str) -> None:
    store.register_worker(
        WorkerInfo(id=worker_id, env="dev", host="test", pid=1, concurrency=1,
                   tasks=[fenced.id], lease_seconds=30.0)
    )


def _step(run_id: str, epoch: int, key: str, now: float) -> StepDone:
    return StepDone(run_id=run_id, epoch=epoch, key=key, kind="step", fingerprint=None,
                    output='"v"', attempt=1, started_at=now, finished_at=now)


def test_a_worker_whose_lease_lapsed_cannot_commit(
    store: Store, client: Client, clock: FakeClock
) -> None:
    run_id = client.trigger(fenced, {}).id
    serves = {fenced.queue.name: [fenced.id]}
    _register(store, "worker_a")
    (claim,) = store.claim("worker_a", "dev", serves, 10)
    assert claim.run.id == run_id and claim.epoch == 1
    now = clock.now()
    assert store.apply("worker_a", [_step(run_id, 1, "one", now)]) == [True]

    # Cut off past its lease: refused by the clock alone, before any reaper ran.
    clock.advance(31)
    assert store.apply("worker_a", [_step(run_id, 1, "late", clock.now())]) == [False]

    report = store.tick()  # a peer's reaper
    assert report.reaped_workers == 1 and report.requeued_runs == 1
    run = store.get_run("dev", run_id)
    assert run is not None
    assert run.status == RunStatus.QUEUED and run.worker_id is None and run.attempt == 2
    assert run.error is not None and run.error["code"] == "worker_lost"
    assert not store.heartbeat("worker_a", 30.0).alive  # it cannot revive its lease

    late = [
        _step(run_id, 1, "two", clock.now()),
        LogLine(run_id=run_id, epoch=1, ts=clock.now(), attempt=1, level="info",
                message="late", data=None),
        SetMetadata(run_id=run_id, epoch=1, metadata='{"late": true}'),
        EndSegment(run_id=run_id, epoch=1, outcome="completed", output='"late"'),
    ]
    assert store.apply("worker_a", late) == [False, False, False, False]
    run = store.get_run("dev", run_id)
    assert run is not None
    assert run.status == RunStatus.QUEUED and run.output is None and run.metadata == {}
    assert [e.key for e in store.journal(run_id)] == ["one"]
    assert [e for e in store.events(run_id) if e.kind == "log"] == []

    # A peer takes the run at a new epoch; the old epoch stays fenced even for the peer.
    _register(store, "worker_b")
    (again,) = store.claim("worker_b", "dev", serves, 10)
    assert again.epoch == 2
    assert set(again.journal) == {"one"}
    assert store.apply("worker_b", [_step(run_id, 1, "stale", clock.now())]) == [False]
    assert store.apply("worker_a", [_step(run_id, 2, "thief", clock.now())]) == [False]
    done = EndSegment(run_id=run_id, epoch=2, outcome="completed", output='"ok"')
    assert store.apply("worker_b", [done]) == [True]
    run = store.get_run("dev", run_id)
    assert run is not None and run.status == RunStatus.COMPLETED and run.output == "ok"
