"""Bulk actions, the store's side: typed rows and the abstract methods.

A bulk action cancels or replays every run matching a ``BulkFilter``. It walks the runs in
id order from ``cursor`` up to ``bound_id`` (the newest run in the environment when it was
created: runs triggered later, its own replays among them, are not part of its set), a
bounded batch at a time. ``commit_bulk_batch`` moves the cursor in the same transaction
as the batch's cancels or replays, guarded by the cursor it started from, so a resumed or
concurrent runner continues after the last committed batch and no run is acted on twice.
The logic around it (validating replays, progress, the loop) is ``outlast/_bulk.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..runs import Run

if TYPE_CHECKING:  # base.py's Store derives from BulkStore
    from .base import NewRun


@dataclass(frozen=True)
class BulkFilter:
    """Which runs a bulk action covers. Empty fields match everything.

    ``version`` is the hook for run versions (a run locks to the code version it started
    on, C11): the store refuses it until runs carry a version column; then it becomes one
    more clause in ``_sql_bulk.filter_sql``."""

    task_id: str | None = None
    status: tuple[str, ...] = ()
    tag: str | None = None
    queue: str | None = None
    created_from: float | None = None  # epoch seconds, inclusive
    created_to: float | None = None
    search: str | None = None  # a run id or idempotency key (the dashboard's search box)
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items() if v not in (None, (), [])}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BulkFilter:
        return cls(
            task_id=data.get("task_id"),
            status=tuple(data.get("status") or ()),
            tag=data.get("tag"),
            queue=data.get("queue"),
            created_from=data.get("created_from"),
            created_to=data.get("created_to"),
            search=data.get("search"),
            version=data.get("version"),
        )


@dataclass(frozen=True)
class BulkAction:
    id: str
    env: str
    action: str  # cancel | replay
    filter: BulkFilter
    bound_id: str
    cursor: str
    status: str  # running | completed | aborted
    total: int
    processed: int = 0
    succeeded: int = 0
    requested: int = 0
    skipped: int = 0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status != "running"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["filter"] = self.filter.to_json()
        return out


@dataclass(frozen=True)
class BulkBatch:
    """What one batch did, to commit with the cursor move. ``last_id`` is the last run id
    the batch covered (acted on or skipped)."""

    last_id: str
    covered: int
    cancel_ids: Sequence[str] = ()
    replays: Sequence[NewRun] = ()
    skipped: int = 0
    last_error: str | None = None


class BulkStore(abc.ABC):
    """The store methods bulk actions use (implemented by ``_sql_bulk.BulkMixin``)."""

    @abc.abstractmethod
    def count_bulk_matches(self, env: str, f: BulkFilter) -> int:
        """How many runs match now (the dry-run count)."""

    @abc.abstractmethod
    def bulk_sample(self, env: str, f: BulkFilter, limit: int) -> list[Run]:
        """The newest matching runs (what a confirmation shows)."""

    @abc.abstractmethod
    def create_bulk_action(self, env: str, bulk_id: str, action: str, f: BulkFilter
                           ) -> BulkAction:
        """Record a bulk action over the runs matching now; nothing is acted on yet."""

    @abc.abstractmethod
    def get_bulk_action(self, env: str, bulk_id: str) -> BulkAction | None: ...

    @abc.abstractmethod
    def list_bulk_actions(self, env: str, limit: int = 20) -> list[BulkAction]:
        """Newest first."""

    @abc.abstractmethod
    def bulk_candidates(self, bulk: BulkAction, limit: int) -> list[Run]:
        """The next matching runs after the cursor, oldest first, up to ``bound_id``."""

    @abc.abstractmethod
    def commit_bulk_batch(self, bulk: BulkAction, batch: BulkBatch) -> BulkAction | None:
        """Apply a batch and move the cursor in one transaction; None (and nothing
        written) when the cursor is no longer ``bulk.cursor`` (another runner got there
        first) or the action is no longer running."""

    @abc.abstractmethod
    def finish_bulk_action(self, env: str, bulk_id: str, status: str) -> BulkAction:
        """Mark it completed or aborted (an aborted action acts on nothing more)."""
