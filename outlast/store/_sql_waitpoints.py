"""Waitpoint tokens: create, complete (first completion wins, C7), read."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import InvalidState, TokenNotFound, TokenTimedOut
from .._serde import dumps
from ._rows import (
    _waitpoint,
)
from ._sql_core import SqlCore
from .base import (
    Waitpoint,
)


class WaitpointsMixin(SqlCore):
    """Mixed into SqlStore; relies on its ``_transaction``, ``_complete`` and ``now``."""

    # -- waitpoints -----------------------------------------------------------------------
    def create_token(
        self,
        env: str,
        token_id: str,
        *,
        timeout_at: float | None,
        idempotency_key: str | None = None,
        idempotency_ttl: float | None = None,
        tags: Sequence[str] = (),
        run_id: str | None = None,
        request_key: str | None = None,
        buttons: str | None = None,
    ) -> Waitpoint:
        now = self.now()
        with self._transaction() as tx:
            if request_key is not None:
                # The key and the token commit together: a retry either finds both or
                # neither. Prefixed, so a key once used to trigger cannot name a token.
                key = f"token:{request_key}"
                if tx.q("claim_request_key", env=env, key=key, now=now):
                    tx.x("set_request_response", env=env, key=key, response=token_id)
                else:
                    first = tx.q("request_response", env=env, key=key)[0]["response"]
                    return _waitpoint(tx.q("get_waitpoint", env=env, id=first)[0])
            if idempotency_key is not None:
                tx.x("release_waitpoint_key", env=env, idempotency_key=idempotency_key, now=now)
                found = tx.q("find_waitpoint_by_key", env=env, idempotency_key=idempotency_key)
                if found:
                    return _waitpoint(found[0])
            tx.x(
                "insert_waitpoint",
                id=token_id,
                env=env,
                kind="token",
                run_id=run_id,
                timeout_at=timeout_at,
                idempotency_key=idempotency_key,
                idempotency_expires_at=(
                    now + idempotency_ttl if idempotency_key and idempotency_ttl else None
                ),
                tags=dumps(list(tags)),
                pending_children=0,
                now=now,
            )
            if buttons is not None:
                tx.x("set_waitpoint_buttons", env=env, id=token_id, buttons=buttons)
            return _waitpoint(tx.q("get_waitpoint", env=env, id=token_id)[0])

    def complete_waitpoint(
        self, env: str, waitpoint_id: str, output: str, *, is_error: bool = False
    ) -> tuple[Waitpoint, bool]:
        now = self.now()
        with self._transaction() as tx:
            rows = tx.q("get_waitpoint", env=env, id=waitpoint_id)
            if not rows:
                raise TokenNotFound(
                    f"no waitpoint token {waitpoint_id!r} in environment {env!r}",
                    field="id",
                )
            if rows[0]["kind"] != "token":
                raise InvalidState(
                    f"waitpoint {waitpoint_id!r} is a {rows[0]['kind']}, not a token"
                )
            timeout_at = rows[0]["timeout_at"]
            if rows[0]["status"] == "pending" and timeout_at is not None and timeout_at <= now:
                # Past its timeout, not yet fired by a tick: the timeout wins, as it
                # would have a moment later, and the waiting run resumes timed out.
                self._complete(tx, waitpoint_id, "timed_out", None, True, now)
                done = False
            else:
                done = self._complete(tx, waitpoint_id, "completed", output, is_error, now)
            wp = _waitpoint(tx.q("get_waitpoint", env=env, id=waitpoint_id)[0])
        if wp.status == "timed_out":  # raised after the commit, which keeps the timeout
            self.wake_local()
            raise TokenTimedOut(f"waitpoint token {waitpoint_id!r} timed out")
        if done:
            self.wake_local()
        return wp, done

    def get_waitpoint(self, env: str, waitpoint_id: str) -> Waitpoint | None:
        with self._transaction() as tx:
            rows = tx.q("get_waitpoint", env=env, id=waitpoint_id)
            if not rows:
                return None
            waiting = [r["run_id"] for r in tx.q("waiting_runs", id=waitpoint_id)]
        return _waitpoint(rows[0], waiting)

    def waitpoint_env(self, waitpoint_id: str) -> str | None:
        with self._transaction() as tx:
            rows = tx.q("get_waitpoint_env", id=waitpoint_id)
        return str(rows[0]["env"]) if rows else None

    def list_waitpoints(
        self, env: str, *, status: str | None = None, limit: int = 100
    ) -> list[Waitpoint]:
        with self._transaction() as tx:
            rows = tx.q("list_waitpoints", env=env, status=status, limit=limit)
            return [
                _waitpoint(r, [w["run_id"] for w in tx.q("waiting_runs", id=r["id"])])
                for r in rows
            ]
