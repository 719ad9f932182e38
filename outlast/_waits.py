"""Durable waits: ``wait.sleep``, ``wait.until``, waitpoint tokens and their results.

A wait journals a waitpoint and blocks its branch; once every branch of the run is
blocked the run suspends (``RunContext.block``). Short sleeps are served in place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import _serde
from ._errors import OutlastError, TokenNotFound, TokenTimedOut
from ._ids import derived_id
from ._run_context import DurableCall, RunContext, _current, _require
from .client import default_async_client
from .waitpoints import Token as Token
from .waitpoints import callback_url


@dataclass(frozen=True)
class WaitResult:
    ok: bool
    output: Any = None
    timed_out: bool = False
    error: str | None = None

    def unwrap(self) -> Any:
        if self.timed_out:
            raise TokenTimedOut("the waitpoint token timed out")
        if not self.ok:
            raise OutlastError(self.error or "the waitpoint completed with an error")
        return self.output


def _seconds(value: timedelta | float | int) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _Wait:
    async def sleep(self, duration: timedelta | float | int) -> None:
        """Sleep durably: the run is parked (no worker held) and resumes when due."""
        seconds = max(0.0, _seconds(duration))
        ctx = _current.get()
        if ctx is None:
            await asyncio.sleep(seconds)
            return
        async with ctx.call("sleep", "sleep", repr(seconds)) as call:
            await self._sleep_until(ctx, call, ctx.store.now() + seconds, seconds)

    async def until(self, when: datetime) -> None:
        """Sleep durably until ``when`` (a timezone-aware datetime)."""
        if when.tzinfo is None:
            raise OutlastError("wait.until() needs a timezone-aware datetime")
        ctx = _current.get()
        target = when.timestamp()
        if ctx is None:
            await asyncio.sleep(max(0.0, target - time.time()))
            return
        async with ctx.call("until", "sleep", when.isoformat()) as call:
            await self._sleep_until(ctx, call, target, target - ctx.store.now())

    async def _sleep_until(
        self, ctx: RunContext, call: DurableCall, target: float, seconds: float
    ) -> None:
        entry = call.entry
        if entry is not None:
            if entry.status == "done":
                return
            state = ctx.waitpoints.get(entry.waitpoint_id or "")
            if state is not None and state.status != "pending":
                return
            await ctx.block(call.key, entry.waitpoint_id or "")
            return
        started = ctx.store.now()
        if seconds <= ctx.inplace_sleep_seconds:
            # Short sleeps are served in place: parking would cost more than it saves.
            await asyncio.sleep(max(0.0, seconds))
            await ctx.commit(call.step_done(None, started))
            return
        waitpoint_id = derived_id("waitpoint", ctx.run.id, call.key)
        await ctx.commit(
            call.start_wait(
                started, waitpoint_id=waitpoint_id, new_waitpoint_kind="sleep", timeout_at=target
            )
        )
        await ctx.block(call.key, waitpoint_id)

    async def create_token(
        self,
        timeout: timedelta | float | None = None,
        *,
        idempotency_key: str | None = None,
        idempotency_key_ttl: timedelta | float | None = None,
        tags: Sequence[str] = (),
        buttons: Mapping[str, Any] | None = None,
    ) -> Token:
        """A token that a callback, a human or app code completes; wait on it with
        ``wait.for_token``. Inside a task it is journaled (a replay gets the same token).
        ``buttons``: the dashboard's ``{label: data}`` for it (``_token_buttons.py``)."""
        from ._token_buttons import buttons_json

        ctx = _current.get()
        shown = buttons_json(buttons, in_task=ctx is not None)
        if ctx is None:
            return await default_async_client().create_token(
                timeout=timeout,
                idempotency_key=idempotency_key,
                idempotency_key_ttl=idempotency_key_ttl,
                tags=tags,
            )
        async with ctx.call("create_token", "create_token", None) as call:
            if call.entry is not None:
                return Token(**_serde.loads(call.entry.output))
            started = ctx.store.now()
            timeout_at = started + _seconds(timeout) if timeout is not None else None
            token_id = derived_id("waitpoint", ctx.run.id, call.key)
            ttl = _seconds(idempotency_key_ttl) if idempotency_key_ttl is not None else None
            wp = await asyncio.to_thread(
                ctx.store.create_token,
                ctx.run.env,
                token_id,
                timeout_at=timeout_at,
                idempotency_key=idempotency_key,
                idempotency_ttl=ttl,
                tags=tags,
                run_id=ctx.run.id,
                buttons=shown,
            )
            token = Token(
                id=wp.id,
                callback_url=await asyncio.to_thread(callback_url, ctx.store, wp.id),
                timeout_at=wp.timeout_at,
            )
            await ctx.commit(call.step_done(_serde.dumps(token.__dict__), started))
            return token

    async def for_event(
        self,
        name: str,
        *,
        match: str | None = None,
        value: Any = None,
        if_: str | None = None,
        timeout: timedelta | float | None = None,
        since: timedelta | float | None = None,
    ) -> WaitResult:
        """Wait until an event ``name`` is published whose value at ``match``
        (``"data.invoice_id"``) equals ``value``, or for which ``if_`` (CEL over
        ``event``) is true; ``output`` is the event. Only events published after the wait
        registers count, plus, with ``since``, the newest match published within that
        long before (``_event_wait.py``). The run is parked meanwhile."""
        from ._event_wait import for_event

        return await for_event(name, match=match, value=value, if_=if_, timeout=timeout,
                               since=since)

    async def for_token(self, token: Token | str) -> WaitResult:
        """Wait until the token is completed (or times out); the run is parked meanwhile."""
        ctx = _require("wait.for_token()")
        token_id = token.id if isinstance(token, Token) else token
        async with ctx.call("for_token", "token", token_id) as call:
            if call.entry is None:
                # Look before journaling: a wait recorded on a token that does not exist
                # would park every later attempt on a waitpoint that can never complete.
                wp = await asyncio.to_thread(ctx.store.get_waitpoint, ctx.run.env, token_id)
                if wp is None:
                    raise TokenNotFound(f"no waitpoint token {token_id!r}", field="token")
                await ctx.commit(call.start_wait(ctx.store.now(), waitpoint_id=token_id))
                if wp.status != "pending":
                    return _wait_result(wp.status, wp.output, wp.is_error)
            else:
                state = ctx.waitpoints.get(token_id)
                if state is not None and state.status != "pending":
                    return _wait_result(state.status, _serde.loads(state.output), state.is_error)
            await ctx.block(call.key, token_id)
            raise AssertionError("unreachable")  # pragma: no cover


def _wait_result(status: str, output: Any, is_error: bool) -> WaitResult:
    if status == "timed_out":
        return WaitResult(ok=False, timed_out=True, error="timed out")
    if is_error:
        return WaitResult(ok=False, output=output, error=str(output))
    return WaitResult(ok=True, output=output)
