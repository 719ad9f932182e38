"""The client's HTTP transport: the same calls as the database client, over the API.

Each logical request carries a request idempotency key, reused on retries, so a trigger
retried after a lost response returns the first run instead of creating a second (C1).
"""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from . import _errors as e
from . import _serde
from ._trigger import TriggerOptions
from .durable import Token
from .runs import Run, RunStatus
from .store.base import Waitpoint

_CODES: dict[str, type[e.OutlastError]] = {
    cls.code: cls
    for cls in (
        e.ValidationError,
        e.PayloadTooLarge,
        e.UnknownTask,
        e.RunNotFound,
        e.TokenNotFound,
        e.TokenTimedOut,
        e.InvalidState,
        e.QueueNotFound,
        e.ScheduleNotFound,
        e.BulkActionNotFound,
    )
}


class Unauthorized(e.OutlastError):
    """The secret key is missing, wrong or revoked."""

    code = "unauthorized"


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_from_json(d: dict[str, Any]) -> Run:
    err = d.get("error")
    error = None
    if err:
        error = {
            "code": err.get("code"),
            "type": err.get("name"),
            "message": err.get("message"),
            "traceback": err.get("stackTrace"),
        }
    return Run(
        id=d["id"],
        env=(d.get("env") or {}).get("name", ""),
        task_id=d["taskIdentifier"],
        queue=d.get("queue", ""),
        status=RunStatus(d["status"]),
        payload=d.get("payload"),
        output=d.get("output"),
        error=error,
        metadata=d.get("metadata") or {},
        tags=d.get("tags") or [],
        attempt=d.get("attempt", d.get("attemptCount", 0)),
        max_attempts=d.get("maxAttempts", 0),
        priority=d.get("priority", 0.0),
        concurrency_key=d.get("concurrencyKey"),
        idempotency_key=d.get("idempotencyKey"),
        created_at=_ts(d.get("createdAt")) or 0.0,
        updated_at=_ts(d.get("updatedAt")) or 0.0,
        available_at=_ts(d.get("delayedUntil")) or _ts(d.get("createdAt")) or 0.0,
        delay_until=_ts(d.get("delayedUntil")),
        ttl_expires_at=_ts(d.get("ttlExpiresAt")),
        started_at=_ts(d.get("startedAt")),
        finished_at=_ts(d.get("finishedAt")),
        max_duration=d.get("maxDuration"),
        worker_id=d.get("workerId"),
        parent_id=d.get("parentId"),
        root_id=d.get("rootId"),
        depth=d.get("depth", 0),
        replayed_from=d.get("replayedFrom"),
        cancel_requested=bool(d.get("cancelRequested")),
        wait_reason=d.get("why"),
        version=d.get("lockedToVersion"),
    )


@dataclass(frozen=True)
class HttpTrigger:
    """One run to start over HTTP: the task, its validated payload, the caller's options."""

    task_id: str
    payload: str  # JSON text
    options: TriggerOptions


def _seconds(value: _dt.timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)


def wire_options(o: TriggerOptions) -> dict[str, Any]:
    """The options the caller set, in the API's names. Only those: the server fills in the
    task's own defaults (queue, retries, tags), which the app may not know."""
    opts: dict[str, Any] = {
        "queue": {"name": o.queue} if o.queue else None,
        "tags": list(o.tags) or None,
        "metadata": o.metadata,
        "maxAttempts": o.max_attempts,
        "priority": o.priority or None,
        "concurrencyKey": o.concurrency_key,
        "idempotencyKey": o.idempotency_key,
        "idempotencyKeyTTL": _seconds(o.idempotency_key_ttl),
        "delay": _seconds(o.delay),
        "ttl": _seconds(o.ttl),
        "maxDuration": _seconds(o.max_duration),
        "lockToVersion": o.version,
    }
    return {k: v for k, v in opts.items() if v is not None}


def _item(t: HttpTrigger) -> dict[str, Any]:
    # The payload is already JSON text: embed it as is rather than parse it again.
    return {"task": t.task_id, "payload": orjson.Fragment(t.payload),
            "options": wire_options(t.options)}


class HttpTransport:
    def __init__(self, api_url: str, secret_key: str, *, timeout: float = 30.0,
                 retries: int = 3) -> None:
        if not secret_key:
            raise e.ConfigurationError(
                "an API URL needs a secret key: pass secret_key= or set OUTLAST_SECRET_KEY",
                field="OUTLAST_SECRET_KEY",
            )
        self.api_url = api_url.rstrip("/")
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {secret_key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None, idempotent: bool = False) -> Any:
        headers = {"Idempotency-Key": uuid.uuid4().hex} if idempotent else {}
        content = None
        if json is not None:
            content = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, path, content=content, params=params,
                                          headers=headers)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if resp.status_code < 500 and resp.status_code not in (408, 429):
                    return self._result(resp)
                if attempt == self.retries:
                    return self._result(resp)
            time.sleep(delay)
            delay *= 3
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, resp: httpx.Response) -> Any:
        if resp.status_code < 400:
            return resp.json()
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text}
        message = str(body.get("error") or resp.reason_phrase)
        code = str(body.get("code") or "")
        if resp.status_code == 401:
            raise Unauthorized(message)
        cls = _CODES.get(code, e.OutlastError)
        if issubclass(cls, e.ValidationError):
            raise cls(message, field=body.get("field"))
        raise cls(message, status=resp.status_code)

    # -- the client's calls ---------------------------------------------------------------
    def trigger(self, items: Sequence[HttpTrigger]) -> list[tuple[str, bool]]:
        """One request, whatever the count; retried with the same request key, so a retry
        after a lost response returns the first runs (C1)."""
        if len(items) == 1:
            body = _item(items[0])
            task = quote(body.pop("task"), safe="")
            out = self.request("POST", f"/api/v1/tasks/{task}/trigger", json=body,
                               idempotent=True)
            return [(out["id"], bool(out.get("isCached")))]
        out = self.request("POST", "/api/v2/tasks/batch",
                           json={"items": [_item(t) for t in items]}, idempotent=True)
        return [(x["id"], bool(x.get("isCached"))) for x in out["runs"]]

    def retrieve(self, run_id: str) -> Run:
        return run_from_json(self.request("GET", f"/api/v1/runs/{quote(run_id, safe='')}"))

    def list_runs(self, **filters: Any) -> list[Run]:
        params: dict[str, Any] = {}
        if filters.get("status"):
            params["status"] = ",".join(str(s) for s in filters["status"])
        for ours, theirs in (("task_id", "task"), ("tag", "tag"), ("queue", "queue"),
                             ("search", "search"), ("limit", "limit"), ("before", "cursor"),
                             ("created_from", "created_from"), ("created_to", "created_to")):
            if filters.get(ours) is not None:
                params[theirs] = filters[ours]
        out = self.request("GET", "/api/v1/runs", params=params)
        return [run_from_json(d) for d in out["data"]]

    def cancel(self, run_id: str) -> Run:
        self.request("POST", f"/api/v1/runs/{quote(run_id, safe='')}/cancel")
        return self.retrieve(run_id)

    def replay(self, run_id: str, payload: Any, has_payload: bool) -> tuple[str, str]:
        """Start a replay; returns the new run's id and task id."""
        body = {"payload": _json(payload)} if has_payload else {}
        out = self.request("POST", f"/api/v1/runs/{quote(run_id, safe='')}/replay", json=body,
                           idempotent=True)
        return str(out["id"]), str(out["taskIdentifier"])

    def create_token(self, timeout: float | None, idempotency_key: str | None,
                     idempotency_ttl: float | None, tags: Sequence[str]) -> Token:
        body = {"timeout": timeout, "idempotencyKey": idempotency_key,
                "idempotencyKeyTTL": idempotency_ttl, "tags": list(tags)}
        out = self.request("POST", "/api/v1/waitpoints/tokens",
                           json={k: v for k, v in body.items() if v is not None},
                           idempotent=True)
        return Token(id=out["id"], callback_url=out["url"])

    def complete_token(self, token_id: str, data: Any) -> Waitpoint:
        self.request("POST", f"/api/v1/waitpoints/tokens/{quote(token_id, safe='')}/complete",
                     json={"data": _json(data)})
        return self.get_token(token_id)

    def get_token(self, token_id: str) -> Waitpoint:
        d = self.request("GET", f"/api/v1/waitpoints/tokens/{quote(token_id, safe='')}")
        return _waitpoint(d)

    def list_tokens(self, status: str | None, limit: int) -> list[Waitpoint]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        out = self.request("GET", "/api/v1/waitpoints/tokens", params=params)
        return [_waitpoint(d) for d in out["data"]]

    def list_queues(self) -> list[dict[str, Any]]:
        return [_queue(q) for q in self.request("GET", "/api/v1/queues")["data"]]

    def pause_queue(self, name: str, paused: bool) -> dict[str, Any]:
        return _queue(self.request(
            "POST", f"/api/v1/queues/{quote(name, safe='/')}/pause",
            json={"action": "pause" if paused else "resume"},
        ))

    def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        return _queue(self.request(
            "POST", f"/api/v1/queues/{quote(name, safe='/')}/concurrency",
            json={"limit": limit},
        ))


def _json(value: Any) -> orjson.Fragment:
    """A value as the database client would store it (pydantic models, dataclasses…)."""
    return orjson.Fragment(_serde.to_json(value))


def _queue(d: dict[str, Any]) -> dict[str, Any]:
    """The API's queue in the keys the database client returns."""
    rate = d.get("rateLimit") or {}
    return {
        "name": d["name"],
        "queued": d.get("queued", 0),
        "executing": d.get("running", 0),
        "concurrency_limit": d.get("concurrencyLimit"),
        "global_limit": d.get("globalLimit"),
        "rate_limit_count": rate.get("limit"),
        "rate_limit_period": rate.get("periodSeconds"),
        "paused": bool(d.get("paused")),
        "keys": d.get("keys") or {},
    }


def _waitpoint(d: dict[str, Any]) -> Waitpoint:
    status = {"WAITING": "pending", "COMPLETED": "completed", "TIMED_OUT": "timed_out"}
    return Waitpoint(
        id=d["id"],
        env="",
        kind="token",
        status=status.get(d.get("status", ""), str(d.get("status", "")).lower()),
        run_id=None,
        timeout_at=_ts(d.get("timeoutAt")),
        output=d.get("output"),
        is_error=bool(d.get("outputIsError")),
        idempotency_key=d.get("idempotencyKey"),
        tags=d.get("tags") or [],
        created_at=_ts(d.get("createdAt")) or 0.0,
        completed_at=_ts(d.get("completedAt")),
        waiting_runs=d.get("waitingRuns") or [],
    )
