"""Tasks the Trigger.dev SDK compatibility test triggers from Node."""

from __future__ import annotations

from typing import Any

from outlast import task, wait


@task(id="compat-echo")
async def compat_echo(payload: Any) -> Any:
    return payload


@task(id="compat-wait-token")
async def compat_wait_token(payload: dict[str, str]) -> Any:
    result = await wait.for_token(payload["tokenId"])
    return result.output
