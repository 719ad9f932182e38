"""Why isn't this run executing? One sentence for any run, from the store's state."""

from __future__ import annotations

import datetime as _dt

from .runs import Run, RunStatus
from .store._versions_base import VersionStore
from .store.base import QueueState, RunReads


def _at(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _delayed(run: Run) -> str:
    at = _at(run.delay_until or run.available_at)
    meta = run.metadata
    group = meta.get("debounce") or meta.get("batch")
    if not isinstance(group, dict):
        return f"delayed until {at}"
    key = f" for key {group.get('key')!r}" if group.get("key") else ""
    if "debounce" in meta:  # the same shape _sql_groups writes
        return (f"debounced{key}: {group.get('count')} trigger(s) so far; it starts at {at} "
                "unless another one comes first")
    return f"batching{key}: {group.get('count')} event(s) so far; it starts at {at} or when full"


def why(store: RunReads, run: Run) -> str:
    """A plain explanation of what the run is doing or waiting for."""
    now = store.now()
    s = run.status
    if s.is_final:
        return f"the run ended {s}"
    if s == RunStatus.EXECUTING:
        note = " (cancel requested)" if run.cancel_requested else ""
        return f"executing attempt {run.attempt} on worker {run.worker_id}{note}"
    if s == RunStatus.DEQUEUED:
        return (
            f"dequeued by worker {run.worker_id}: it starts there when a run of queue "
            f"{run.queue!r} ends and hands it its slot"
        )
    if s == RunStatus.DELAYED:
        return _delayed(run)
    if s == RunStatus.WAITING:
        return _waiting(store, run, now)
    # QUEUED
    if run.available_at > now:
        if run.attempt > 1:
            return (
                f"retrying: attempt {run.attempt} of {run.max_attempts} is due at "
                f"{_at(run.available_at)}"
            )
        return f"queued, not claimable before {_at(run.available_at)}"
    state = store.queue_state(run.env, run.queue, run.concurrency_key or "")
    reasons = _queue_reasons(run, state, now)
    version = version_reason(store, run) if isinstance(store, VersionStore) else None
    if version:
        reasons.append(version)
    elif run.task_id not in store.live_task_ids(run.env):
        reasons.append(f"no live worker serves task {run.task_id!r}")
    if reasons:
        return "; ".join(reasons)
    return "queued and ready: waiting for a free worker slot"


def _queue_reasons(run: Run, q: QueueState | None, now: float) -> list[str]:
    if q is None:
        return []
    out = []
    name = run.queue
    if q["paused"]:
        out.append(f"queue {name!r} is paused")
    limit = q["concurrency_limit"]
    if limit is not None and q["key_executing"] >= limit:
        who = f" for key {run.concurrency_key!r}" if run.concurrency_key else ""
        out.append(
            f"queue {name!r} is at its concurrency limit{who} "
            f"({q['key_executing']} of {limit} executing)"
        )
    glimit = q["global_limit"]
    if glimit is not None and q["executing"] >= glimit:
        out.append(
            f"queue {name!r} is at its global limit ({q['executing']} of {glimit} executing)"
        )
    free_at = q["rate_free_at"]
    if free_at is not None:
        out.append(
            f"queue {name!r} is rate limited ({q['rate_limit_count']} per "
            f"{q['rate_limit_period']:g} s) until {_at(free_at)}"
        )
    return out


def _waiting(store: RunReads, run: Run, now: float) -> str:
    reason = run.wait_reason or {}
    parts = []
    for wp_id in reason.get("waitpoints", []):
        wp = store.get_waitpoint(run.env, wp_id)
        if wp is None:
            continue
        if wp.kind == "sleep":
            parts.append(f"a sleep until {_at(wp.timeout_at or now)}")
        elif wp.kind == "token":
            due = f", times out {_at(wp.timeout_at)}" if wp.timeout_at else ""
            parts.append(f"token {wp.id}{due}")
        elif wp.kind == "event":  # wait.for_event: its tag names the event
            names = [t.removeprefix("event:") for t in wp.tags if t.startswith("event:")]
            due = f", times out {_at(wp.timeout_at)}" if wp.timeout_at else ""
            parts.append(f"event {', '.join(names) or '?'} (waitpoint {wp.id}){due}")
        else:
            parts.append(f"child runs ({wp.kind}, waitpoint {wp.id})")
    return "waiting on " + (", ".join(parts) if parts else "its waitpoints")


def version_reason(store: VersionStore, run: Run) -> str | None:
    """Why no worker may take the run for its version (C11), if that is why: locked to a
    version with no live worker serving its task, or unlocked while the environment is
    pinned to such a version."""
    live = [w for w in store.version_workers(run.env) if run.task_id in w.tasks]
    if run.version is not None:
        if any(w.version == run.version for w in live):
            return None
        locked = store.locked_runs(run.env, run.version).get(run.version, {})
        n = sum(k for st, k in locked.items() if st != "EXECUTING")
        return (
            f"locked to version {run.version}: no live worker of {run.version} "
            f"({n} run{'s' if n != 1 else ''} waiting on it)"
        )
    pinned = store.pinned_version(run.env)
    if pinned is not None and not any(w.version == pinned and not w.draining for w in live):
        return f"the current version is {pinned} (promoted): no live worker of {pinned}"
    if live and all(w.draining for w in live):
        return "only draining workers serve this task, and they take no new run"
    return None
