"""A non-worker process (``outlast server``) registers the release it runs and keeps its
row fresh, so ``outlast migrate --check`` lists it and a contract migration waits for it.
Workers register through their own row (``Store.register_worker``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from typing import Any

log = logging.getLogger(__name__)


async def announce(store: Any, kind: str, env: str, stop: asyncio.Event,
                   every: float | None = None, *, listen: str | None = None,
                   dashboard: str | None = None) -> None:
    """Register as ``kind`` and refresh until ``stop``; then record a clean stop.
    Failures are logged and retried: being listed must never stop a server serving."""
    from .store._sql_schema import SEEN_EVERY

    process_id = f"{kind}_{secrets.token_hex(8)}"
    registered = False
    while not stop.is_set():
        try:
            if registered:
                await asyncio.to_thread(store.touch_process, process_id)
            else:
                await asyncio.to_thread(lambda: store.register_process(
                    process_id, kind, env, listen=listen, dashboard=dashboard))
                registered = True
        except Exception:
            log.warning("could not record this %s in processes; retrying", kind,
                        exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every or SEEN_EVERY)
    if registered:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(store.stop_process, process_id)


def dashboard_guard() -> str:
    """How the dashboard of a server started now is guarded (its create_app rules):
    ``password``, ``open`` (no login at all) or ``locked`` (a login no one can pass)."""
    if os.environ.get("OUTLAST_DASHBOARD_PASSWORD"):
        return "password"
    opened = os.environ.get("OUTLAST_DASHBOARD_OPEN", "").strip().lower()
    return "open" if opened in ("1", "true", "yes", "on") else "locked"
