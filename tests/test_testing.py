"""outlast.testing itself: the env drives runs to completion or their first park, skips
retry backoffs on the fake clock, fires timers on ``advance``, injects step failures, runs
children inline, and the pytest plugin loads from its entry point with either backend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from outlast import Retry, step, task, wait
from outlast.runs import RunStatus
from outlast.testing import OutlastEnv
from tests.conftest import PG_ADMIN_URL

NO_WAIT = Retry(max_attempts=3, min_delay=60.0, max_delay=60.0, factor=1.0, jitter=False)
CALLS: list[str] = []


def record(name: str) -> str:
    CALLS.append(name)
    return name


@task(id="tt-steps", retry=NO_WAIT)
async def steps_task(payload: dict[str, Any]) -> list[str]:
    a = await step.run("a", record, "a")
    b = await step.run("b", record, "b")
    b2 = await step.run("b", record, "b2")
    return [a, b, b2]


@task(id="tt-sleeper")
async def sleeper(payload: dict[str, Any]) -> str:
    await step.run("before", record, "before")
    await wait.sleep(timedelta(days=3))
    return await step.run("after", record, "after")


@task(id="tt-child", retry=NO_WAIT)
async def child(payload: dict[str, int]) -> int:
    return int(await step.run("double", lambda n: n * 2, payload["n"]))


@task(id="tt-parent")
async def parent(payload: dict[str, int]) -> int:
    result = await child.trigger_and_wait({"n": payload["n"]})
    return int(result.unwrap()) + 1


pytestmark = pytest.mark.outlast(tasks=[steps_task, sleeper, child, parent])


@pytest.fixture(autouse=True)
def _calls() -> None:
    CALLS.clear()


async def test_run_completes_and_records_steps_in_order(outlast_env: OutlastEnv) -> None:
    run = await outlast_env.run(steps_task, {})
    assert run.status == RunStatus.COMPLETED
    assert run.output == ["a", "b", "b2"]
    assert run.steps == ["a", "b", "b#2"]
    assert run.step_runs == {"a": 1, "b": 2}
    assert run.attempts == 1


async def test_fail_next_fails_one_execution_and_the_retry_skips_its_backoff(
    outlast_env: OutlastEnv,
) -> None:
    outlast_env.fail_next("b", ValueError)
    started = outlast_env.clock.now()
    run = await outlast_env.run(steps_task, {})

    assert run.status == RunStatus.COMPLETED
    assert run.attempts == 2
    assert CALLS == ["a", "b", "b2"]  # "a" replayed, the injected failure ran no body
    assert run.step_runs == {"a": 1, "b": 3}  # b failed once (injected), then b and b#2
    assert run.step_attempts("a") == {"completed_on": 1, "failures": 0}
    assert run.step_attempts("b") == {"completed_on": 2, "failures": 1}
    assert "ValueError" in run.attempt_errors[0]
    assert outlast_env.clock.now() == pytest.approx(started + 60.0)  # the backoff, skipped


async def test_without_skipping_backoff_the_run_waits_for_the_clock(outlast_env: OutlastEnv
                                                                    ) -> None:
    outlast_env.skip_retry_backoff = False
    outlast_env.fail_next("a", times=3)
    run = await outlast_env.run(steps_task, {})
    assert run.status == RunStatus.QUEUED and run.attempts == 2

    await outlast_env.advance(59)
    assert run.attempts == 2
    await outlast_env.advance(1)
    assert run.attempts == 3
    await outlast_env.advance(60)
    assert run.status == RunStatus.FAILED
    assert "injected failure of step 'a'" in (run.error or {}).get("message", "")
    assert CALLS == []


async def test_a_sleep_parks_the_run_until_advance_crosses_it(outlast_env: OutlastEnv) -> None:
    run = await outlast_env.run(sleeper, {})
    assert run.status == RunStatus.WAITING
    assert run.waiting_on == ["sleep"]

    await outlast_env.advance(timedelta(days=3) - timedelta(seconds=1))
    assert run.status == RunStatus.WAITING
    await outlast_env.advance(timedelta(seconds=1))

    assert run.status == RunStatus.COMPLETED
    assert CALLS == ["before", "after"]  # "before" was not run again on the resume


async def test_children_run_inline_with_their_retries(outlast_env: OutlastEnv) -> None:
    outlast_env.fail_next("double")
    run = await outlast_env.run(parent, {"n": 20})

    assert run.status == RunStatus.COMPLETED
    assert run.output == 41
    [kid] = run.children
    assert kid.status == RunStatus.COMPLETED and kid.attempts == 2


async def test_run_of_a_token_wait_can_be_completed(outlast_env: OutlastEnv) -> None:
    @task(id="tt-approval")
    async def approval(payload: dict[str, Any]) -> Any:
        token = await wait.create_token(timeout=timedelta(hours=1))
        return (await wait.for_token(token)).output

    env = OutlastEnv(outlast_env.store, outlast_env.clock, tasks=[approval])
    async with env:
        run = await env.run(approval, {})
        assert run.tokens == [run.token]
        await env.complete_token(run.token, {"ok": True})
        assert run.output == {"ok": True}
        with pytest.raises(AssertionError, match="waits on no token"):
            _ = run.token


PLUGIN_TEST = '''
from outlast import step, task
from outlast.runs import RunStatus

@task(id="plugin-hello")
async def hello(payload: dict) -> str:
    return await step.run("greet", lambda: "hi " + payload["name"])

async def test_hello(outlast_env, outlast_store):
    run = await outlast_env.run(hello, {"name": "ada"})
    assert run.status == RunStatus.COMPLETED and run.output == "hi ada"
    assert type(outlast_store).__name__ == EXPECTED
'''


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_plugin_loads_from_its_entry_point(pytester: pytest.Pytester, backend: str) -> None:
    expected = "SQLiteStore" if backend == "sqlite" else "PostgresStore"
    pytester.makepyfile(test_app=PLUGIN_TEST.replace("EXPECTED", repr(expected)))
    args = ["-p", "no:cacheprovider", "-o", "asyncio_mode=auto", "-p", "no:django"]
    if backend == "postgres":
        args.append(f"--outlast-database-url={PG_ADMIN_URL}")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)


async def test_a_stubbed_child_gives_the_parent_its_result(outlast_env: OutlastEnv) -> None:
    outlast_env.stub(child, 99)
    run = await outlast_env.run(parent, {"n": 20})
    assert run.output == 100
    [kid] = run.children
    assert kid.output == 99 and kid.steps == []  # the real body (its "double" step) never ran


async def test_a_child_stubbed_to_fail_fails_the_parents_wait(outlast_env: OutlastEnv) -> None:
    outlast_env.stub(child, error=ValueError("no doubling today"))
    run = await outlast_env.run(parent, {"n": 1})
    [kid] = run.children
    assert kid.status == RunStatus.FAILED and kid.attempts == 3  # retried per its policy
    assert run.status == RunStatus.FAILED  # unwrap() raised in the parent
    with pytest.raises(ValueError, match="exactly one"):
        outlast_env.stub(child)
