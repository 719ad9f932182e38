"""JSON shapes of the API. A run is returned in the shape the official Trigger.dev SDK
parses (required fields present, optional ones omitted rather than null, statuses from
its enum) plus outlast's own fields, which that SDK ignores."""

from __future__ import annotations

from typing import Any

from ..runs import JournalEntry, Run, RunEvent, RunStatus
from ..store.base import QueueListing, Waitpoint
from .durations import iso

_FAILED = {RunStatus.FAILED, RunStatus.EXPIRED, RunStatus.TIMED_OUT}
# Not started yet; a DEQUEUED run is claimed by a worker but still waits for a slot there.
_NOT_STARTED = {RunStatus.QUEUED, RunStatus.DELAYED, RunStatus.DEQUEUED}


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def run_json(
    run: Run, *, why: str | None = None, related: dict[str, Any] | None = None
) -> dict[str, Any]:
    s = run.status
    error = _error_json(run.error) if run.error else None
    duration = run.duration
    return _clean(
        {
            "id": run.id,
            "status": str(s),
            "taskIdentifier": run.task_id,
            "isQueued": s in _NOT_STARTED,
            "isExecuting": s == RunStatus.EXECUTING,
            "isWaiting": s == RunStatus.WAITING,
            "isCompleted": s.is_final,
            "isSuccess": s == RunStatus.COMPLETED,
            "isFailed": s in _FAILED,
            "isCancelled": s == RunStatus.CANCELED,
            "isTest": False,
            "createdAt": iso(run.created_at),
            "updatedAt": iso(run.updated_at),
            "startedAt": iso(run.started_at),
            "finishedAt": iso(run.finished_at),
            "delayedUntil": iso(run.delay_until),
            "expiredAt": iso(run.finished_at) if s == RunStatus.EXPIRED else None,
            "tags": list(run.tags),
            "costInCents": 0,
            "baseCostInCents": 0,
            "durationMs": int((duration or 0) * 1000),
            "depth": run.depth,
            "triggerFunction": "triggerAndWait" if run.parent_id else "trigger",
            "relatedRuns": related or {},
            "attemptCount": run.attempt if run.started_at is not None else 0,
            "idempotencyKey": run.idempotency_key,
            "metadata": run.metadata or {},
            "payload": run.payload,
            "output": run.output if s == RunStatus.COMPLETED else None,
            "error": error,
            # outlast's own fields
            "env": {"id": run.env, "name": run.env},
            "queue": run.queue,
            "concurrencyKey": run.concurrency_key,
            "attempt": run.attempt,
            "maxAttempts": run.max_attempts,
            "priority": run.priority,
            "parentId": run.parent_id,
            "rootId": run.root_id,
            "replayedFrom": run.replayed_from,
            "lockedToVersion": run.version,
            "workerId": run.worker_id,
            "cancelRequested": run.cancel_requested or None,
            "maxDuration": run.max_duration,
            "ttlExpiresAt": iso(run.ttl_expires_at),
            # usage: executed (every attempt, without parked waits), queued, parked
            "activeMs": int(run.active_seconds * 1000),
            "queuedMs": int(run.queued_seconds * 1000),
            "waitedMs": int(run.waited_seconds * 1000),
            "why": why,
        }
    )


def _error_json(error: dict[str, Any]) -> dict[str, Any]:
    return _clean(
        {
            "message": str(error.get("message") or error.get("code") or "error"),
            "name": error.get("type"),
            "stackTrace": error.get("traceback"),
            "code": error.get("code"),
        }
    )


def related_json(run: Run) -> dict[str, Any]:
    return _clean(
        {
            "id": run.id,
            "status": str(run.status),
            "taskIdentifier": run.task_id,
            "createdAt": iso(run.created_at),
            "updatedAt": iso(run.updated_at),
            "tags": list(run.tags),
            "depth": run.depth,
            "triggerFunction": "triggerAndWait" if run.parent_id else "trigger",
            "isQueued": run.status in _NOT_STARTED,
            "isExecuting": run.status == RunStatus.EXECUTING,
            "isWaiting": run.status == RunStatus.WAITING,
            "isCompleted": run.is_final,
            "isSuccess": run.status == RunStatus.COMPLETED,
            "isFailed": run.status in _FAILED,
            "isCancelled": run.status == RunStatus.CANCELED,
            "isTest": False,
            "costInCents": 0,
            "baseCostInCents": 0,
            "durationMs": int((run.duration or 0) * 1000),
        }
    )


def step_json(entry: JournalEntry) -> dict[str, Any]:
    return _clean(
        {
            "key": entry.key,
            "kind": entry.kind,
            "status": entry.status,
            "attempt": entry.attempt,
            "startedAt": iso(entry.started_at),
            "finishedAt": iso(entry.finished_at),
            "waitpointId": entry.waitpoint_id,
        }
    )


def event_json(event: RunEvent) -> dict[str, Any]:
    return _clean(
        {
            "id": event.id,
            "kind": event.kind,
            "ts": iso(event.ts),
            "attempt": event.attempt,
            "level": event.level,
            "message": event.message,
            "data": event.data,
            # the attempt an attempt_failed event ends: the seconds it executed
            "activeSeconds": event.active_seconds,
        }
    )


def token_json(wp: Waitpoint, url: str | None = None) -> dict[str, Any]:
    status = {"pending": "WAITING", "completed": "COMPLETED", "timed_out": "TIMED_OUT"}
    return _clean(
        {
            "id": wp.id,
            "url": url,
            "status": status.get(wp.status, wp.status.upper()),
            "idempotencyKey": wp.idempotency_key,
            "timeoutAt": iso(wp.timeout_at),
            "completedAt": iso(wp.completed_at),
            "output": wp.output,
            "outputIsError": wp.is_error,
            "tags": wp.tags,
            "createdAt": iso(wp.created_at),
            "waitingRuns": wp.waiting_runs,
        }
    )


def queue_json(q: QueueListing) -> dict[str, Any]:
    return _clean(
        {
            "name": q["name"],
            "queued": int(q.get("queued") or 0),
            "running": int(q.get("executing") or 0),
            "concurrencyLimit": q.get("concurrency_limit"),
            "globalLimit": q.get("global_limit"),
            "rateLimit": (
                {"limit": q["rate_limit_count"], "periodSeconds": q["rate_limit_period"]}
                if q.get("rate_limit_count")
                else None
            ),
            "paused": bool(q.get("paused")),
            "keys": q.get("keys"),
        }
    )
