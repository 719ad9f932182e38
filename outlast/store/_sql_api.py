"""Store parts used by the HTTP server: secret keys and request idempotency."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import cast

from ._sql_core import SqlCore
from ._sql_group_trigger import trigger_once_in
from .base import ApiKeyMatch, ApiKeyRow, NewRun, TriggerResult


class ApiMixin(SqlCore):
    """Mixed into SqlStore; relies on its ``_transaction``, ``_insert_runs`` and ``now``."""

    # -- secret keys ----------------------------------------------------------------------
    def create_api_key(self, key_id: str, env: str, prefix: str, key_hash: str) -> None:
        with self._transaction() as tx:
            tx.x("insert_api_key", id=key_id, env=env, prefix=prefix, key_hash=key_hash,
                 now=self.now())

    def find_api_key(self, key_hash: str) -> ApiKeyMatch | None:
        with self._transaction() as tx:
            rows = tx.q("find_api_key", key_hash=key_hash)
        return cast(ApiKeyMatch, dict(rows[0])) if rows else None

    def list_api_keys(self, env: str | None = None) -> list[ApiKeyRow]:
        with self._transaction() as tx:
            return [cast(ApiKeyRow, dict(r)) for r in tx.q("list_api_keys", env=env)]

    def revoke_api_key(self, key_id_or_prefix: str) -> int:
        with self._transaction() as tx:
            return int(tx.x("revoke_api_key", id=key_id_or_prefix, now=self.now()))

    # -- request idempotency (C1 for retried HTTP requests) -------------------------------
    def trigger_once(
        self, env: str, request_key: str, runs: Sequence[NewRun]
    ) -> tuple[list[TriggerResult], bool]:
        """Trigger ``runs`` unless a request with ``request_key`` already did; then return
        its results. The key and the runs commit in one transaction."""
        now = self.now()
        with self._transaction() as tx:
            results, cached = trigger_once_in(self, tx, env, request_key, runs, now)
        if cached:
            return results, True
        with contextlib.suppress(Exception):
            self.wake_local()
        return results, False

    def forget_old_requests(self, older_than: float = 24 * 3600.0) -> None:
        with self._transaction() as tx:
            tx.x("forget_old_requests", before=self.now() - older_than)
            tx.x("forget_old_packets", before=self.now() - older_than)

    def remember_request(self, env: str, key: str, response: str) -> tuple[str, bool]:
        """Store ``response`` under a request key unless one is stored; return the stored
        one and whether it was there already."""
        with self._transaction() as tx:
            if tx.q("claim_request_key", env=env, key=key, now=self.now()):
                tx.x("set_request_response", env=env, key=key, response=response)
                return response, False
            rows = tx.q("request_response", env=env, key=key)
        return str(rows[0]["response"]) if rows and rows[0]["response"] else response, True

    # -- Trigger.dev SDK compatibility ----------------------------------------------------
    def reset_idempotency_key(self, env: str, task_id: str, key: str) -> list[str]:
        """Release an idempotency key so the next trigger with it creates a new run."""
        with self._transaction() as tx:
            rows = tx.q("reset_idempotency_key", env=env, task_id=task_id, idempotency_key=key)
        return [str(r["id"]) for r in rows]

    def put_packet(self, env: str, path: str, content_type: str, data: str) -> None:
        with self._transaction() as tx:
            tx.x("put_packet", env=env, path=path, content_type=content_type, data=data,
                 now=self.now())

    def get_packet(self, env: str, path: str) -> tuple[str, str] | None:
        with self._transaction() as tx:
            rows = tx.q("get_packet", env=env, path=path)
        return (str(rows[0]["content_type"]), str(rows[0]["data"])) if rows else None
