"""Task code versions in the store (C11): the rows and the role a store plays for them.

A worker serves one version; a run locks to one when its first attempt starts (or its
trigger pinned one). ``VersionScope`` is what a claim is limited to; ``VersionStore`` is
what the CLI, the HTTP API, the dashboard and ``explain`` read and change.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VersionScope:
    """What a worker of ``version`` may claim: runs locked to its version, and unlocked
    runs of ``new_task_ids`` (the tasks it is current for; none while draining)."""

    version: str
    new_task_ids: Sequence[str] = ()


@dataclass(frozen=True)
class LiveWorker:
    """A live worker, as far as versions care."""

    id: str
    version: str
    tasks: list[str]
    draining: bool
    started_at: float


@dataclass
class VersionInfo:
    """One version of an environment: ``outlast versions list``'s row."""

    version: str
    registered_at: float | None
    workers: int = 0  # live workers serving it (draining ones included)
    draining: int = 0  # of which draining
    runs: dict[str, int] = field(default_factory=dict)  # unfinished runs locked, by status
    current: bool = False
    pinned: bool = False

    @property
    def unfinished(self) -> int:
        return sum(self.runs.values())

    @property
    def retirable(self) -> bool:
        """No unfinished run is locked to it: its workers may stop for good."""
        return self.unfinished == 0


class VersionStore(abc.ABC):
    """The store's side of versions (one implementation: ``_sql_versions``)."""

    @abc.abstractmethod
    def version_workers(self, env: str) -> list[LiveWorker]:
        """Workers alive with a current lease, on the store's clock."""

    @abc.abstractmethod
    def registered_versions(self, env: str) -> dict[str, float]:
        """Every version a serving worker registered: version -> first registration."""

    @abc.abstractmethod
    def pinned_version(self, env: str) -> str | None:
        """The version ``promote`` pinned, if any."""

    @abc.abstractmethod
    def pin_version(self, env: str, version: str | None) -> None:
        """Pin ``version`` as current (None: unpin, the newest registered is current)."""

    @abc.abstractmethod
    def locked_runs(self, env: str, version: str | None = None) -> dict[str, dict[str, int]]:
        """Unfinished runs locked to a version: version -> status -> count."""

    @abc.abstractmethod
    def migrate_runs(
        self, env: str, from_version: str, to_version: str, task_id: str | None = None
    ) -> int:
        """Lock the unfinished runs locked to ``from_version`` (of ``task_id``) to
        ``to_version`` instead; how many. They are claimed by its workers from then on."""
