"""Group commit of triggers, the store's side: many callers' triggers in one transaction.

The HTTP server queues the triggers of concurrent requests to one committer per process
(``outlast/server/trigger_commit.py``), which hands them here in groups. Each request
keeps what it had alone: its runs go in together, with its request idempotency key
(``trigger_once``'s) when it has one, and it gets its own results back. Two requests of
one group that share a key are written in order, so the second gets the first's runs,
as it would have a moment later on its own.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import NewRun, TriggerResult


@dataclass
class TriggerRequest:
    """The runs of one trigger request, in one environment; ``request_key`` makes a retry
    of the request return the first one's runs (C1)."""

    env: str
    runs: list[NewRun]
    request_key: str | None = None
    results: list[TriggerResult] = field(default_factory=list)
    cached: bool = False  # the request key was seen: results are the first request's


class GroupTriggerStore(abc.ABC):
    """Implemented by ``_sql_group_trigger.GroupTriggerMixin``."""

    @abc.abstractmethod
    def trigger_group(self, requests: Sequence[TriggerRequest]) -> None:
        """Write every request's runs in one transaction and fill in each request's
        ``results`` and ``cached``. All or nothing: if this raises, nothing of the group
        was written (the caller splits a group the database refused on its data)."""
