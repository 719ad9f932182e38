"""Versions (issue 19, C11), in process on both backends with the fake clock: a run locks
to the version that starts it and only that version resumes or retries it; children
waited on run on their parent's version, plain triggers and replays on the current one;
``promote`` moves new runs; ``patched()``; ``runs migrate``; the reason a locked run
waits. Real processes and SIGKILL: tests/test_versions_deploy.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import outlast
from outlast import FakeClock, RunStatus, step, task, wait
from outlast.client import Client
from outlast.explain import why
from outlast.store.base import Store
from outlast.worker import Worker

Workers = Callable[..., Worker]

# What the "deployed code" does: a test flips these to play v2 of the same task ids.
CODE: dict[str, Any] = {"rename_a": False, "patch": False}
CALLS: list[str] = []


def _note(name: str) -> str:
    CALLS.append(name)
    return name


@task(id="ver-sleepy")
async def sleepy(payload: dict[str, Any]) -> list[str]:
    a = await step.run("a2" if CODE["rename_a"] else "a", _note, "a")
    await wait.sleep(60)
    b = await step.run("b", _note, "b")
    return [a, b]


@task(id="ver-quick")
async def quick(payload: dict[str, Any]) -> str:
    return outlast.current_run().id


@task(id="ver-child")
async def child(payload: dict[str, Any]) -> int:
    return int(payload["n"]) * 2


@task(id="ver-parent")
async def parent(payload: dict[str, Any]) -> dict[str, Any]:
    waited = await child.trigger_and_wait({"n": 1})
    fired = await child.trigger({"n": 2})
    return {"waited": waited.id, "fired": fired.id}


@task(id="ver-patch")
async def patchy(payload: dict[str, Any]) -> str:
    await step.run("a", _note, "a")
    if CODE["patch"] and outlast.patched("new-b"):
        branch = await step.run("b-new", _note, "b-new")
    else:
        branch = await step.run("b", _note, "b")
    await wait.sleep(60)
    await step.run("c", _note, "c")
    return branch


def _reset() -> None:
    CODE.update(rename_a=False, patch=False)
    CALLS.clear()


async def test_a_parked_run_resumes_only_on_the_version_it_locked_to(
    store: Store, client: Client, clock: FakeClock, workers: Workers
) -> None:
    _reset()
    v1 = workers(sleepy, quick, version="v1")
    h = client.trigger(sleepy, {})
    await v1.run_until_idle()
    run = client.retrieve(h.id)
    assert run.status == RunStatus.WAITING and run.version == "v1"
    await v1.shutdown(grace=0)  # v1's only worker is gone

    v2 = workers(sleepy, quick, version="v2")
    clock.advance(61)  # the timer fires: the run is queued, locked to v1
    await v2.run_until_idle()
    run = client.retrieve(h.id)
    assert run.status == RunStatus.QUEUED and run.version == "v1"
    assert CALLS == ["a"]  # v2 never ran it
    assert "locked to version v1: no live worker of v1 (1 run waiting on it)" in why(store, run)

    new = client.trigger(quick, {})  # new runs go to the current version, v2
    v1_again = workers(sleepy, quick, version="v1")
    await v1_again.run_until_idle()
    assert client.retrieve(h.id).status == RunStatus.COMPLETED
    assert client.retrieve(h.id).output == ["a", "b"]
    assert client.retrieve(new.id).status == RunStatus.QUEUED  # v1 is not current
    await v2.run_until_idle()
    done = client.retrieve(new.id)
    assert done.status == RunStatus.COMPLETED and done.version == "v2"


async def test_a_retry_is_claimed_only_by_its_version(
    store: Store, client: Client, clock: FakeClock, workers: Workers
) -> None:
    flaky_calls: list[str] = []

    @task(id="ver-flaky", retry=outlast.Retry(max_attempts=3, min_delay=1, max_delay=1,
                                               jitter=False))
    async def flaky(payload: dict[str, Any]) -> str:
        flaky_calls.append(outlast.current_run().id)
        if len(flaky_calls) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    v1 = workers(flaky, version="v1")
    h = client.trigger(flaky, {})
    await v1.run_until_idle()
    await v1.shutdown(grace=0)
    v2 = workers(flaky, version="v2")
    clock.advance(5)
    await v2.run_until_idle()
    run = client.retrieve(h.id)
    assert run.status == RunStatus.QUEUED and run.attempt == 2 and run.version == "v1"
    await workers(flaky, version="v1").run_until_idle()
    assert client.retrieve(h.id).status == RunStatus.COMPLETED


async def test_a_waited_child_runs_on_its_parents_version_a_fired_one_and_a_replay_on_current(
    store: Store, client: Client, workers: Workers
) -> None:
    v1 = workers(parent, child, version="v1")
    await v1.start(background=False)
    v2 = workers(parent, child, version="v2")  # registered after v1: current
    await v2.start(background=False)
    h = client.trigger(parent, {}, version="v1")  # pinned to v1 explicitly
    assert client.retrieve(h.id).version == "v1"
    await v2.run_until_idle()
    assert client.retrieve(h.id).status == RunStatus.QUEUED  # not v2's
    for _ in range(3):
        await v1.run_until_idle()
        await v2.run_until_idle()
    out = client.retrieve(h.id)
    assert out.status == RunStatus.COMPLETED, out
    assert client.retrieve(out.output["waited"]).version == "v1"
    fired = client.retrieve(out.output["fired"])
    assert fired.status == RunStatus.COMPLETED and fired.version == "v2"

    replay = client.replay(h.id)
    assert client.retrieve(replay.id).version is None  # locks when it starts
    await v1.run_until_idle()
    assert client.retrieve(replay.id).status == RunStatus.QUEUED
    await v2.run_until_idle()
    again = client.retrieve(replay.id)
    assert again.status == RunStatus.COMPLETED and again.version == "v2"


async def test_promote_back_to_v1_sends_new_runs_to_v1(
    store: Store, client: Client, workers: Workers
) -> None:
    v1 = workers(quick, version="v1")
    await v1.start(background=False)
    v2 = workers(quick, version="v2")
    await v2.start(background=False)
    rows = {r["version"]: r for r in client.list_versions()}
    assert rows["v2"]["current"] and not rows["v1"]["current"]
    client.promote_version("v1")
    h = client.trigger(quick, {})
    await v2.run_until_idle()
    assert client.retrieve(h.id).status == RunStatus.QUEUED
    await v1.run_until_idle()
    run = client.retrieve(h.id)
    assert run.status == RunStatus.COMPLETED and run.version == "v1"
    rows = {r["version"]: r for r in client.list_versions()}
    assert rows["v1"]["current"] and rows["v1"]["pinned"] and rows["v1"]["live_workers"] == 1
    assert rows["v2"]["retirable"] and not rows["v2"]["current"]
    v3 = workers(quick, version="v3")  # a deploy after the rollback: current again
    await v3.start(background=False)
    assert store.pinned_version("dev") is None
    h3 = client.trigger(quick, {})
    await v1.run_until_idle()
    await v3.run_until_idle()
    assert client.retrieve(h3.id).version == "v3"


async def test_versions_list_counts_the_runs_locked_to_each_and_retirable(
    store: Store, client: Client, clock: FakeClock, workers: Workers
) -> None:
    _reset()
    v1 = workers(sleepy, version="v1")
    handles = [client.trigger(sleepy, {}) for _ in range(3)]
    await v1.run_until_idle()
    rows = {r["version"]: r for r in client.list_versions()}
    assert rows["v1"]["locked_runs"] == {"WAITING": 3}
    assert not rows["v1"]["retirable"]
    clock.advance(61)
    await v1.run_until_idle()
    assert all(client.retrieve(h.id).status == RunStatus.COMPLETED for h in handles)
    rows = {r["version"]: r for r in client.list_versions()}
    assert rows["v1"]["retirable"] and rows["v1"]["unfinished_runs"] == 0


async def test_a_draining_worker_takes_only_its_versions_runs_and_says_it_is_drained(
    store: Store, client: Client, clock: FakeClock, workers: Workers
) -> None:
    _reset()
    v1 = workers(sleepy, quick, version="v1")
    parked = client.trigger(sleepy, {})
    await v1.run_until_idle()
    await v1.shutdown(grace=0)
    draining = workers(sleepy, quick, version="v1", drain=True)
    fresh = client.trigger(quick, {})  # unlocked: a draining worker leaves it alone
    await draining.run_until_idle()
    assert client.retrieve(fresh.id).status == RunStatus.QUEUED
    assert "only draining workers serve this task" in why(store, client.retrieve(fresh.id))
    assert draining._drained is not None and not draining._drained.is_set()
    clock.advance(61)
    await draining.run_until_idle()
    assert client.retrieve(parked.id).status == RunStatus.COMPLETED
    await draining.refresh_versions()
    assert draining._drained.is_set()
    assert client.retrieve(fresh.id).status == RunStatus.QUEUED


async def test_patched_is_false_replaying_a_journal_from_before_the_patch_true_after(
    store: Store, client: Client, clock: FakeClock, workers: Workers
) -> None:
    _reset()
    w = workers(patchy, version="v1")
    old = client.trigger(patchy, {})
    await w.run_until_idle()  # parked under the code without the patch
    assert client.retrieve(old.id).status == RunStatus.WAITING
    CODE["patch"] = True  # the patched code (the same version, so it may replay it)
    clock.advance(61)
    await w.run_until_idle()
    assert client.retrieve(old.id).output == "b"  # the old branch, replayed
    new = client.trigger(patchy, {})
    await w.run_until_idle()
    clock.advance(61)
    await w.run_until_idle()
    assert client.retrieve(new.id).output == "b-new"
    marks = {
        r.id: {e.key: e.output for e in store.journal(r.id) if e.kind == "patch"}
        for r in (old, new)
    }
    assert marks == {old.id: {"patch:new-b": "false"}, new.id: {"patch:new-b": "true"}}
    assert CALLS.count("b") == 1 and CALLS.count("b-new") == 1


async def test_migrate_relocks_runs_a_compatible_journal_finishes_an_incompatible_fails_loud(
    store: Store, client: Client, clock: FakeClock, workers: Workers
) -> None:
    _reset()
    v1 = workers(sleepy, version="v1")
    first = client.trigger(sleepy, {})
    await v1.run_until_idle()
    await v1.shutdown(grace=0)
    v2 = workers(sleepy, version="v2")
    assert client.migrate_runs("v1", "v2", task_id="ver-other") == 0
    assert client.migrate_runs("v1", "v2", task_id="ver-sleepy") == 1
    assert client.retrieve(first.id).version == "v2"
    clock.advance(61)
    await v2.run_until_idle()
    assert client.retrieve(first.id).status == RunStatus.COMPLETED

    v1b = workers(sleepy, version="v1")
    second = client.trigger(sleepy, {}, version="v1")
    await v1b.run_until_idle()
    await v1b.shutdown(grace=0)
    CODE["rename_a"] = True  # v2 renames step a: this journal cannot replay on it
    assert client.migrate_runs("v1", "v2") == 1
    clock.advance(61)
    await v2.run_until_idle()
    failed = client.retrieve(second.id)
    assert failed.status == RunStatus.FAILED
    assert failed.error is not None and failed.error["code"] == "non_determinism"
    assert "'a2'" in failed.error["message"] and "'a'" in failed.error["message"]


def test_a_worker_version_defaults_to_a_digest_of_its_tasks_source(store: Store) -> None:
    one = Worker(store, tasks={"ver-quick": quick}, env="dev")
    two = Worker(store, tasks={"ver-quick": quick}, env="dev")
    assert one.version == two.version and one.version.startswith("src-")
    assert Worker(store, tasks={"ver-quick": quick}, env="dev", version="2026.12.04-1").version \
        == "2026.12.04-1"


async def test_the_cli_lists_versions_promotes_and_migrates(
    db_url: str, store: Store, client: Client, workers: Workers, capsys: Any
) -> None:
    from outlast.cli import main

    _reset()
    v1 = workers(sleepy, version="v1")
    h = client.trigger(sleepy, {})
    await v1.run_until_idle()
    await v1.shutdown(grace=0)
    await workers(sleepy, version="v2").start(background=False)
    db = ["--database-url", db_url, "--env", "dev"]
    assert main(["versions", "list", *db]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "current" in lines["v2"] and "WAITING 1" in lines["v1"]
    assert main(["versions", "promote", "v1", *db]) == 0
    assert store.pinned_version("dev") == "v1"
    assert main(["runs", "migrate", "--from", "v1", "--to", "v2", *db]) == 0
    assert "1 unfinished runs locked to v1 now locked to v2" in capsys.readouterr().out
    assert client.retrieve(h.id).version == "v2"
    assert main(["versions", "promote", "bad version", *db]) == 2


@task(id="ver-patch-sync")
def patchy_sync(payload: dict[str, Any]) -> bool:
    step.run_sync("a", _note, "a")
    first = outlast.patched("sync-change")
    assert outlast.patched("sync-change") is first  # the same answer within the attempt
    return first


async def test_patched_in_a_sync_task_and_outside_a_task(
    store: Store, client: Client, workers: Workers
) -> None:
    h = client.trigger(patchy_sync, {})
    await workers(patchy_sync).run_until_idle()
    assert client.retrieve(h.id).output is True
    assert [(e.key, e.output) for e in store.journal(h.id) if e.kind == "patch"] == [
        ("patch:sync-change", "true")]
    with pytest.raises(outlast.OutlastError, match="inside a running task"):
        outlast.patched("x")


async def test_bulk_actions_filter_by_the_version_runs_are_locked_to(
    store: Store, client: Client, workers: Workers
) -> None:
    _reset()
    await workers(sleepy, version="v1").run_until_idle()
    for _ in range(2):
        client.trigger(sleepy, {})
    client.trigger(sleepy, {}, version="v2")
    await workers(sleepy, version="v1").run_until_idle()
    assert client.bulk_count("cancel", version="v1") == 2
    assert client.bulk_count("cancel", version="v2") == 1
