"""Debounced and batched subscribers for the multi-process tests (tests/test_debounce.py,
tests/test_batch.py): served by real ``outlast worker`` processes."""

from __future__ import annotations

from typing import Any

from outlast import Batch, Debounce, task


@task(id="mp-debounce", on=["mp.changed.*"], debounce=Debounce(key="data.account", period=2.0))
async def mp_debounce(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@task(id="mp-batch", on=["mp.item.*"], batch=Batch(max_size=10, timeout=2.0))
async def mp_batch(payload: list[dict[str, Any]]) -> int:
    return len(payload)
