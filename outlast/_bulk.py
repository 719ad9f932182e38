"""Bulk actions: cancel or replay every run matching a filter, in bounded batches,
resumable, never acting on a run twice.

One home for the logic the client, the HTTP API, the CLI and the dashboard share:
validating the filter, the dry-run count, and the batch loop. A batch reads the next
runs after the action's cursor, prepares their replays (or lists their cancels), and
hands both to ``Store.commit_bulk_batch``, which applies them and moves the cursor in one
transaction guarded by the cursor the batch started from. A process killed between
batches loses nothing; one killed inside a batch rolled it back whole; two runners of one
action never both commit the same batch.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Sequence

from ._errors import BulkActionNotFound, OutlastError, ValidationError
from ._ids import new_id
from ._trigger import prepare_replay
from .runs import FINAL_STATUSES, RunStatus
from .store._bulk_base import BulkAction, BulkBatch, BulkFilter
from .store.base import ApiStore, NewRun

ACTIONS = ("cancel", "replay")
DEFAULT_BATCH = 500
MAX_BATCH = 5000
_STATUSES = [s.value for s in RunStatus]
CANCELLABLE = tuple(s for s in _STATUSES if s not in {str(f) for f in FINAL_STATUSES})

Progress = Callable[[BulkAction], None]


def _when(value: float | str | _dt.datetime | None, name: str) -> float | None:
    """Epoch seconds from a number, a datetime or an ISO 8601 text (naive means UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"{name}: not a time: {value!r} (ISO 8601 or epoch "
                                  "seconds)", field=name) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.timestamp()


def check_action(action: str) -> str:
    if action not in ACTIONS:
        raise ValidationError(f"action is cancel or replay, not {action!r}", field="action")
    return action


def make_filter(
    action: str,
    *,
    task: str | None = None,
    status: str | Sequence[str] | None = None,
    tag: str | None = None,
    queue: str | None = None,
    created_from: float | str | _dt.datetime | None = None,
    created_to: float | str | _dt.datetime | None = None,
    search: str | None = None,
    version: str | None = None,
) -> BulkFilter:
    """A validated filter. A cancel covers only runs that have not ended: with no status
    given, every status that can still be canceled; statuses that have all ended are an
    error rather than an empty (or, worse, unfiltered) set."""
    check_action(action)
    names = [status] if isinstance(status, str) else list(status or ())
    statuses: list[str] = []
    for raw in names:
        for s in str(raw).split(","):
            s = s.strip().upper()
            if not s:
                continue
            if s not in _STATUSES:
                raise ValidationError(f"status: unknown status {s!r} (one of "
                                      f"{', '.join(_STATUSES)})", field="status")
            if s not in statuses:
                statuses.append(s)
    if action == "cancel":
        wanted = statuses or list(CANCELLABLE)
        statuses = [s for s in wanted if s in CANCELLABLE]
        if not statuses:
            raise ValidationError("status: runs that have ended cannot be canceled; "
                                  f"cancel covers {', '.join(CANCELLABLE)}", field="status")
    return BulkFilter(
        task_id=task or None,
        status=tuple(statuses),
        tag=tag or None,
        queue=queue or None,
        created_from=_when(created_from, "created_from"),
        created_to=_when(created_to, "created_to"),
        search=search or None,
        version=version or None,
    )


def batch_size(value: int | None) -> int:
    n = DEFAULT_BATCH if value is None else value
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BATCH:
        raise ValidationError(f"batch_size is a whole number from 1 to {MAX_BATCH}",
                              field="batch_size")
    return n


def count(store: ApiStore, env: str, f: BulkFilter) -> int:
    """The dry run: how many runs match now."""
    return store.count_bulk_matches(env, f)


def start(store: ApiStore, env: str, action: str, f: BulkFilter) -> BulkAction:
    """Record a bulk action over the runs matching now (acts on nothing yet)."""
    return store.create_bulk_action(env, new_id("bulk"), check_action(action), f)


def get(store: ApiStore, env: str, bulk_id: str) -> BulkAction:
    bulk = store.get_bulk_action(env, bulk_id)
    if bulk is None:
        raise BulkActionNotFound(f"no bulk action {bulk_id!r} in environment {env!r}",
                                 field="id")
    return bulk


def run_batch(store: ApiStore, bulk: BulkAction, size: int) -> BulkAction:
    """Act on the next batch after the cursor; returns the action as committed."""
    runs = store.bulk_candidates(bulk, size)
    if not runs:
        return store.finish_bulk_action(bulk.env, bulk.id, "completed")
    if bulk.action == "cancel":
        batch = BulkBatch(last_id=runs[-1].id, covered=len(runs),
                          cancel_ids=[r.id for r in runs])
    else:
        replays: list[NewRun] = []
        skipped, last_error = 0, None
        for run in runs:
            try:
                replays.append(prepare_replay(store, bulk.env, run, run.payload))
            except OutlastError as exc:  # the task is gone, or its payload no longer fits
                skipped += 1
                last_error = f"{run.id}: {exc.message}"
        batch = BulkBatch(last_id=runs[-1].id, covered=len(runs), replays=replays,
                          skipped=skipped, last_error=last_error)
    committed = store.commit_bulk_batch(bulk, batch)
    # None: another runner committed this batch first; read where it got to.
    return committed if committed is not None else get(store, bulk.env, bulk.id)


def run(
    store: ApiStore,
    env: str,
    bulk_id: str,
    *,
    size: int | None = None,
    on_progress: Progress | None = None,
    max_seconds: float | None = None,
) -> BulkAction:
    """Run (or resume) a bulk action batch by batch until it is done, or until
    ``max_seconds`` passed (then it stays ``running`` and a later call continues)."""
    n = batch_size(size)
    bulk = get(store, env, bulk_id)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while not bulk.done:
        bulk = run_batch(store, bulk, n)
        if on_progress is not None:
            on_progress(bulk)
        if deadline is not None and time.monotonic() >= deadline:
            break
    return bulk


def abort(store: ApiStore, env: str, bulk_id: str) -> BulkAction:
    get(store, env, bulk_id)
    return store.finish_bulk_action(env, bulk_id, "aborted")


def describe(bulk: BulkAction) -> str:
    """One progress line: ``cancel bulk_…: 1,000/12,345 runs (canceled 990, …)``."""
    verb = "canceled" if bulk.action == "cancel" else "replayed"
    parts = [f"{verb} {bulk.succeeded:,}"]
    if bulk.requested:
        parts.append(f"cancel requested {bulk.requested:,} executing")
    if bulk.skipped:
        parts.append(f"skipped {bulk.skipped:,}")
    state = "" if bulk.status == "running" else f" {bulk.status}"
    return (f"{bulk.action} {bulk.id}:{state} {bulk.processed:,}/{bulk.total:,} runs "
            f"({', '.join(parts)})")

