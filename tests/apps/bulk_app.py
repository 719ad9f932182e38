"""Tasks for the bulk action tests (tests/test_bulk.py): never executed there, only
triggered, canceled and replayed."""

from __future__ import annotations

from typing import Any

from outlast import task


@task(id="bulk-a")
async def bulk_a(payload: dict[str, Any]) -> None:
    return None


@task(id="bulk-b")
async def bulk_b(payload: dict[str, Any]) -> None:
    return None
