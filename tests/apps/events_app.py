"""Subscribers for the events crash test, and a server entry point that stalls between
committing a publish and answering it (so the test can SIGKILL it in that window).

``python -m tests.apps.events_app server ARGS…`` runs ``outlast server ARGS…`` with
``outlast._events.publish`` wrapped: after the store commits, it touches the file named
by OUTLAST_TEST_PUBLISHED and sleeps, never answering."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from outlast import task, wait


@task(id="ev-crash-a", on=["crash.*"])
async def crash_a(payload: dict[str, Any]) -> None:
    return None


@task(id="ev-crash-b", on=["crash.signup"])
async def crash_b(payload: dict[str, Any]) -> None:
    return None


@task(id="ev-crash-filtered", on=["crash.signup"], if_="event.data.n < 0")
async def crash_filtered(payload: dict[str, Any]) -> None:
    return None


@task(id="ev-crash-waiter")
async def crash_waiter(payload: dict[str, Any]) -> dict[str, Any]:
    got = await wait.for_event("crash.paid", match="data.invoice_id", value=payload["inv"],
                               timeout=timedelta(days=7))
    return {"ok": got.ok, "event": got.output}


TASKS = {t.id: t for t in (crash_a, crash_b, crash_filtered, crash_waiter)}


def _stall_after_commit() -> None:
    from outlast import _events

    real = _events.publish

    def publish(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)  # committed here
        Path(os.environ["OUTLAST_TEST_PUBLISHED"]).write_text("committed")
        time.sleep(600)  # the test kills the process during this
        return result

    _events.publish = publish  # type: ignore[assignment]


if __name__ == "__main__":
    from outlast.cli import main

    _stall_after_commit()
    sys.exit(main(sys.argv[1:]))
