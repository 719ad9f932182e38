"""The tasks bench/soak_many.py triggers; its workers load this module with ``--app``.

Every step body appends one line to a ledger file of its own process (the directory is
``SOAK_LEDGER_DIR``), outside the platform: ``<time> <pid> <run> <step> <attempt>``, one
unbuffered O_APPEND write(2), so the line is in the kernel before the body returns and
survives a SIGKILL of the process. A step returns ``<pid>:<attempt>``, so the journal says
which execution's result was committed. The soak reads both to prove that no step body ran
twice except across a kill (C2, C3).

Task ids are global, so every id here starts with ``soak-``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import outlast
from outlast import Retry, queue, step, task, wait

# Children of the fan-out parents, in two limited queues the soak samples (C5).
# A slot is held for a child's claim, step and end commits, not just its 5 ms body; on a
# loaded 2-core machine with 8 workers that is about a second, so the children are a small
# share of the runs and the limits not tiny, or the two queues alone take hours.
LIMITED = queue("soak-limited", concurrency_limit=10)
NARROW = queue("soak-narrow", concurrency_limit=4)
LIMITS = {"soak-limited": 10, "soak-narrow": 4}
BATCH_CHILDREN = 2  # per parent, in soak-limited, with batch_trigger_and_wait
CHILD_SECONDS = 0.005

# A kill costs every run it strikes an attempt (worker_lost); the flaky task spends one.
_RETRY = Retry(max_attempts=10, min_delay=0.0, max_delay=0.0, jitter=False)

_fd: int | None = None
_fd_pid = 0


def _note(step_name: str) -> str:
    """One ledger line for this body's start; returns what the step will record."""
    global _fd, _fd_pid
    pid = os.getpid()
    if _fd is None or _fd_pid != pid:
        directory = os.environ["SOAK_LEDGER_DIR"]
        _fd = os.open(f"{directory}/{pid}.ledger", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                      0o644)
        _fd_pid = pid
    run = outlast.current_run()
    os.write(_fd, f"{time.time():.6f} {pid} {run.id} {step_name} {run.attempt}\n".encode())
    return f"{pid}:{run.attempt}"


async def _body(step_name: str, sleep: float = 0.0) -> str:
    mark = _note(step_name)
    if sleep:
        await asyncio.sleep(sleep)
    return mark


@task(id="soak-steps", retry=_RETRY)
async def soak_steps(p: dict[str, Any]) -> list[str]:
    """Three steps."""
    return [str(await step.run(s, _body, s)) for s in ("s1", "s2", "s3")]


@task(id="soak-flaky", retry=_RETRY)
async def soak_flaky(p: dict[str, Any]) -> str:
    """Fails its first attempt after a committed step: the retry replays ``s1`` from the
    journal (its body must not run again) and goes on."""
    first = await step.run("s1", _body, "s1")
    if outlast.current_run().attempt == 1:
        raise RuntimeError("the first attempt fails on purpose")
    return f"{first} {await step.run('s2', _body, 's2')}"


@task(id="soak-sleep", retry=_RETRY)
async def soak_sleep(p: dict[str, Any]) -> str:
    """A step, a durable sleep (the worker runs with OUTLAST_INPLACE_SLEEP_SECONDS=0, so
    the run parks), a step."""
    first = await step.run("s1", _body, "s1")
    await wait.sleep(float(p.get("sleep", 0.2)))
    return f"{first} {await step.run('s2', _body, 's2')}"


@task(id="soak-token", retry=_RETRY)
async def soak_token(p: dict[str, Any]) -> str:
    """A step, a wait for a token the soak's driver completes over HTTP, a step."""
    first = await step.run("s1", _body, "s1")
    token = await wait.create_token(timeout=3600, tags=["soak"])
    result = await wait.for_token(token)
    if not result.ok:
        raise RuntimeError(f"token {token.id} timed out")
    return f"{first} {await step.run('s2', _body, 's2')}"


@task(id="soak-child", queue=LIMITED, retry=_RETRY)
async def soak_child(p: int) -> str:
    return str(await step.run("c", _body, "c", CHILD_SECONDS))


@task(id="soak-narrow-child", queue=NARROW, retry=_RETRY)
async def soak_narrow_child(p: int) -> str:
    return str(await step.run("c", _body, "c", CHILD_SECONDS))


@task(id="soak-parent", retry=_RETRY)
async def soak_parent(p: dict[str, Any]) -> int:
    """Fans out: a batch of children in soak-limited and one child in soak-narrow, waited
    on together, then a step."""
    batch, one = await asyncio.gather(
        soak_child.batch_trigger_and_wait(list(range(BATCH_CHILDREN))),
        soak_narrow_child.trigger_and_wait(0),
    )
    failed = [r for r in [*batch, one] if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} children failed")
    await step.run("s1", _body, "s1")
    return len(batch) + 1


# Runs per top-level trigger of each task, children included (the driver sizes N with it).
RUNS_PER = {"soak-steps": 1, "soak-flaky": 1, "soak-sleep": 1, "soak-token": 1,
            "soak-parent": 2 + BATCH_CHILDREN}
# Steps each task's run executes once it completes, by name.
STEPS = {"soak-steps": ("s1", "s2", "s3"), "soak-flaky": ("s1", "s2"),
         "soak-sleep": ("s1", "s2"), "soak-token": ("s1", "s2"), "soak-parent": ("s1",),
         "soak-child": ("c",), "soak-narrow-child": ("c",)}
