"""A task that fails for good on its first attempt, for the alerts end-to-end test."""

from __future__ import annotations

from typing import Any

from outlast import Retry, task


@task(id="alerts-e2e-fails", retry=Retry(max_attempts=1))
async def fails(payload: dict[str, Any]) -> None:
    raise ConnectionError(f"ledger {payload['ledger']} unreachable")
