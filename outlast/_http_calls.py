"""The calls of the HTTP transports as plans, and the API's JSON shapes.

A plan is a generator that yields the requests a call needs and receives each one's
decoded answer; ``HttpTransport`` (blocking) and ``AsyncHttpTransport`` (asyncio) in
``_http`` run the same plans and differ only in how they send a request. The JSON shapes
are the API's (Trigger.dev's names), turned into the objects the database client returns.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import orjson

from . import _serde
from ._trigger import TriggerOptions
from .runs import Run, RunStatus
from .store.base import Waitpoint
from .waitpoints import Token

if TYPE_CHECKING:
    from ._transport import Triggered

R = TypeVar("R")


def ts(value: str | None) -> float | None:
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
        created_at=ts(d.get("createdAt")) or 0.0,
        updated_at=ts(d.get("updatedAt")) or 0.0,
        available_at=ts(d.get("delayedUntil")) or ts(d.get("createdAt")) or 0.0,
        delay_until=ts(d.get("delayedUntil")),
        ttl_expires_at=ts(d.get("ttlExpiresAt")),
        started_at=ts(d.get("startedAt")),
        finished_at=ts(d.get("finishedAt")),
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
        "debounce": _debounce(o.debounce),
    }
    return {k: v for k, v in opts.items() if v is not None}


def _debounce(d: Any) -> dict[str, Any] | None:
    """Trigger.dev 4.3's ``debounce`` option; the mode always sent (its default differs)."""
    if d is None:
        return None
    out = {"key": d.key, "delay": d.period, "mode": d.mode}
    return out if d.timeout is None else {**out, "maxDelay": d.timeout}


def _item(t: HttpTrigger) -> dict[str, Any]:
    # The payload is already JSON text: embed it as is rather than parse it again.
    return {"task": t.task_id, "payload": orjson.Fragment(t.payload),
            "options": wire_options(t.options)}


def _json(value: Any) -> orjson.Fragment:
    """A value as the database client would store it (pydantic models, dataclasses…)."""
    return orjson.Fragment(_serde.to_json(value))


def queue_from_json(d: dict[str, Any]) -> dict[str, Any]:
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


def waitpoint_from_json(d: dict[str, Any]) -> Waitpoint:
    status = {"WAITING": "pending", "COMPLETED": "completed", "TIMED_OUT": "timed_out"}
    return Waitpoint(
        id=d["id"],
        env="",
        kind="token",
        status=status.get(d.get("status", ""), str(d.get("status", "")).lower()),
        run_id=None,
        timeout_at=ts(d.get("timeoutAt")),
        output=d.get("output"),
        is_error=bool(d.get("outputIsError")),
        idempotency_key=d.get("idempotencyKey"),
        tags=d.get("tags") or [],
        created_at=ts(d.get("createdAt")) or 0.0,
        completed_at=ts(d.get("completedAt")),
        waiting_runs=d.get("waitingRuns") or [],
    )


# -- the calls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    # Sent with a request idempotency key, kept across retries (C1).
    idempotent: bool = False


Plan = Generator[Request, Any, R]


def _quoted(value: str, safe: str = "") -> str:
    return quote(value, safe=safe)


def trigger_plan(items: Sequence[HttpTrigger]) -> Plan[list[Triggered]]:
    """One request, whatever the count; retried with the same request key, so a retry
    after a lost response returns the first runs (C1)."""
    if len(items) == 1:
        body = _item(items[0])
        task = _quoted(body.pop("task"))
        out = yield Request("POST", f"/api/v1/tasks/{task}/trigger", body, idempotent=True)
        return [(out["id"], bool(out.get("isCached")))]
    out = yield Request("POST", "/api/v2/tasks/batch", {"items": [_item(t) for t in items]},
                        idempotent=True)
    return [(x["id"], bool(x.get("isCached"))) for x in out["runs"]]


def retrieve_plan(run_id: str) -> Plan[Run]:
    return run_from_json((yield Request("GET", f"/api/v1/runs/{_quoted(run_id)}")))


def list_runs_plan(filters: dict[str, Any]) -> Plan[list[Run]]:
    params: dict[str, Any] = {}
    if filters.get("status"):
        params["status"] = ",".join(str(s) for s in filters["status"])
    for ours, theirs in (("task_id", "task"), ("tag", "tag"), ("queue", "queue"),
                         ("search", "search"), ("limit", "limit"), ("before", "cursor"),
                         ("created_from", "created_from"), ("created_to", "created_to")):
        if filters.get(ours) is not None:
            params[theirs] = filters[ours]
    out = yield Request("GET", "/api/v1/runs", params=params)
    return [run_from_json(d) for d in out["data"]]


def cancel_plan(run_id: str) -> Plan[Run]:
    yield Request("POST", f"/api/v1/runs/{_quoted(run_id)}/cancel")
    return (yield from retrieve_plan(run_id))


def replay_plan(run_id: str, payload: Any, has_payload: bool) -> Plan[tuple[str, str]]:
    body = {"payload": _json(payload)} if has_payload else {}
    out = yield Request("POST", f"/api/v1/runs/{_quoted(run_id)}/replay", body,
                        idempotent=True)
    return str(out["id"]), str(out["taskIdentifier"])


def create_token_plan(timeout: float | None, idempotency_key: str | None,
                       idempotency_ttl: float | None, tags: Sequence[str]) -> Plan[Token]:
    body = {"timeout": timeout, "idempotencyKey": idempotency_key,
            "idempotencyKeyTTL": idempotency_ttl, "tags": list(tags)}
    out = yield Request("POST", "/api/v1/waitpoints/tokens",
                        {k: v for k, v in body.items() if v is not None}, idempotent=True)
    return Token(id=out["id"], callback_url=out["url"])


def get_token_plan(token_id: str) -> Plan[Waitpoint]:
    out = yield Request("GET", f"/api/v1/waitpoints/tokens/{_quoted(token_id)}")
    return waitpoint_from_json(out)


def complete_token_plan(token_id: str, data: Any) -> Plan[Waitpoint]:
    yield Request("POST", f"/api/v1/waitpoints/tokens/{_quoted(token_id)}/complete",
                  {"data": _json(data)})
    return (yield from get_token_plan(token_id))


def list_tokens_plan(status: str | None, limit: int) -> Plan[list[Waitpoint]]:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    out = yield Request("GET", "/api/v1/waitpoints/tokens", params=params)
    return [waitpoint_from_json(d) for d in out["data"]]


def list_queues_plan() -> Plan[list[dict[str, Any]]]:
    return [queue_from_json(q) for q in (yield Request("GET", "/api/v1/queues"))["data"]]


def pause_queue_plan(name: str, paused: bool) -> Plan[dict[str, Any]]:
    return queue_from_json((yield Request("POST", f"/api/v1/queues/{_quoted(name, '/')}/pause",
                                 {"action": "pause" if paused else "resume"})))


def queue_limit_plan(name: str, limit: int | None) -> Plan[dict[str, Any]]:
    out = yield Request("POST", f"/api/v1/queues/{_quoted(name, '/')}/concurrency",
                        {"limit": limit})
    return queue_from_json(out)
