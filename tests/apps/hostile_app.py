"""Hostile task code, for tests/faults/test_hostile_code.py (in-process and as a real
`outlast worker` app).

Each task raises, by ``payload["kind"]``, something task code is not supposed to raise: a
``CancelledError`` the platform did not cause, a cancelled future, a ``BaseException``
that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, one
of its own), or an exception whose ``str()`` and ``repr()`` raise. The same from a sync
task, from a step body (async and sync), and from a sync task's step. None of it may
leave a run EXECUTING, and none of it may stop the worker.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from outlast import HookEvent, Retry, current_run, step, task

# Retried at once, so a test sees the second attempt without waiting for a backoff.
TWICE = Retry(max_attempts=2, factor=1.0, min_delay=0.0, max_delay=0.0, jitter=False)
ONCE = Retry(max_attempts=1)


class Hostile(BaseException):
    """Not an Exception: ``except Exception`` does not catch it."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken too")


KINDS = (
    "cancelled_error",
    "cancelled_future",
    "keyboard_interrupt",
    "system_exit",
    "generator_exit",
    "base_exception",
    "unprintable",
)
# What the run's error names as the exception's type, per kind.
TYPE_OF = {
    "cancelled_error": "CancelledError",
    "cancelled_future": "CancelledError",
    "keyboard_interrupt": "KeyboardInterrupt",
    "system_exit": "SystemExit",
    "generator_exit": "GeneratorExit",
    "base_exception": "Hostile",
    "unprintable": "Unprintable",
}
ASYNC_ONLY = {"cancelled_future"}  # a sync body has no future to await


def misbehave(kind: str) -> None:
    if kind == "cancelled_error":
        raise asyncio.CancelledError()
    if kind == "keyboard_interrupt":
        raise KeyboardInterrupt()
    if kind == "system_exit":
        raise SystemExit(3)
    if kind == "generator_exit":
        raise GeneratorExit()
    if kind == "base_exception":
        raise Hostile("a custom BaseException")
    if kind == "unprintable":
        raise Unprintable()
    raise AssertionError(f"unknown kind {kind!r}")


async def amisbehave(kind: str) -> None:
    await asyncio.sleep(0)
    if kind == "cancelled_future":
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.cancel()
        await fut
    misbehave(kind)


@task(id="hostile-async", retry=TWICE)
async def hostile_async(p: dict[str, Any]) -> None:
    await amisbehave(p["kind"])


@task(id="hostile-sync", retry=TWICE)
def hostile_sync(p: dict[str, Any]) -> None:
    misbehave(p["kind"])


@task(id="hostile-step", retry=TWICE)
async def hostile_step(p: dict[str, Any]) -> None:
    await step.run("ok", lambda: 1)
    await step.run("bad", amisbehave, p["kind"])


@task(id="hostile-step-sync", retry=TWICE)
async def hostile_step_sync(p: dict[str, Any]) -> None:
    await step.run("bad", misbehave, p["kind"])


@task(id="hostile-sync-step", retry=TWICE)
def hostile_sync_step(p: dict[str, Any]) -> None:
    step.run_sync("bad", misbehave, p["kind"])


@task(id="hostile-gather", retry=TWICE)
async def hostile_gather(p: dict[str, Any]) -> None:
    """Raises from an asyncio task its code spawned: asyncio lets KeyboardInterrupt and
    SystemExit out of the event loop from there (only a real worker process contains it)."""
    await asyncio.gather(amisbehave(p["kind"]))


def _interrupting_hook(event: HookEvent) -> None:
    HOOKS_CALLED.append(event.name)
    misbehave("keyboard_interrupt" if event.name == "start" else "system_exit")


HOOKS_CALLED: list[str] = []


@task(id="hostile-hooks", on_start=_interrupting_hook, on_end=_interrupting_hook)
async def hostile_hooks(p: dict[str, Any]) -> str:
    """Its hooks raise KeyboardInterrupt (start) and SystemExit (end): a hook never changes
    the run's outcome, nor stops the worker."""
    return "done"


@task(id="hostile-ok")
async def ok(p: dict[str, Any]) -> Any:
    return p


# -- code that ignores or outlives the platform's end ---------------------------------------


@task(id="hostile-swallow", retry=ONCE)
async def swallow_cancel(p: dict[str, Any]) -> str:
    """Catches the platform's cancellation, then raises something hostile (or returns)."""
    try:
        await asyncio.sleep(600)
    except asyncio.CancelledError:
        if p["then"] == "return":
            return "finished anyway"
        misbehave(p["then"])
    return "slept"


@task(id="hostile-spin", retry=ONCE, max_duration=1.0)
async def spin(p: dict[str, Any]) -> float:
    """Holds the event loop on the CPU, never awaiting, for ``seconds``."""
    began = time.monotonic()
    n = 0
    while time.monotonic() - began < p["seconds"]:
        n += 1
    return time.monotonic() - began


# Run id -> monotonic time its sync loop stopped, however it stopped.
SPUN_UNTIL: dict[str, float] = {}


@task(id="hostile-sync-spin", retry=ONCE, max_duration=1.0)
def sync_spin(p: dict[str, Any]) -> float:
    """A sync task looping in pure Python past its max_duration."""
    began = time.monotonic()
    n = 0
    try:
        while time.monotonic() - began < p["seconds"]:
            n += 1
    finally:
        SPUN_UNTIL[current_run().id] = time.monotonic()
    return time.monotonic() - began


# A sync task blocked in C (a lock wait), which no asynchronous exception interrupts: it
# returns when the test sets the gate.
GATE = threading.Event()


@task(id="hostile-sync-blocked", retry=ONCE, max_duration=0.5)
def sync_blocked(p: dict[str, Any]) -> str:
    GATE.wait(p["seconds"])
    return "returned"
