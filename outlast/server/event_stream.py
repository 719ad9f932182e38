"""A run's changes as Server-Sent Events (``GET /api/v1/runs/{id}/events``)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..store.base import ApiStore
from .serialize import event_json, run_json, step_json


async def event_stream(store: ApiStore, env: str, run_id: str) -> AsyncIterator[bytes]:
    """Poll the store and turn changes into SSE frames, in order, until the run ends."""

    def frame(event: str, data: Any) -> bytes:
        return f"event: {event}\ndata: {orjson.dumps(data, default=str).decode()}\n\n".encode()

    last_status = None
    last_meta: Any = None
    seen_steps: dict[str, str] = {}
    after = 0
    idle = 0.0
    while True:
        run = await asyncio.to_thread(store.get_run, env, run_id)
        if run is None:
            return
        journal = await asyncio.to_thread(store.journal, run_id)
        evs = await asyncio.to_thread(store.events, run_id, after)
        changed = False
        # A final status comes after the steps and logs that led to it (read after the
        # run, so they are complete); any other status comes first.
        if run.status != last_status and not run.is_final:
            last_status = run.status
            changed = True
            yield frame("status", {"id": run.id, "status": str(run.status), "attempt": run.attempt})
        for j in journal:
            if seen_steps.get(j.key) != j.status:
                seen_steps[j.key] = j.status
                changed = True
                yield frame("step", step_json(j))
        for e in evs:
            after = e.id
            changed = True
            yield frame("log" if e.kind == "log" else e.kind, event_json(e))
        if run.metadata != last_meta:
            if last_meta is not None or run.metadata:
                yield frame("metadata", run.metadata)
            last_meta = run.metadata
        if run.is_final:
            if run.status != last_status:
                yield frame("status",
                            {"id": run.id, "status": str(run.status), "attempt": run.attempt})
            yield frame("end", run_json(run))
            return
        idle = 0.0 if changed else idle + 0.2
        if idle >= 15.0:
            idle = 0.0
            yield b": keep-alive\n\n"
        await asyncio.sleep(0.2)
