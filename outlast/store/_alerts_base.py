"""The store's roles for alerts (rules, the delivery outbox, the failure scan) and the
errors page (failures grouped by fingerprint), with their rows."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# A storm: past this many deliveries for one rule within one window, the rest of the
# window's events go into one summary delivery, sent when the window ends.
STORM_WINDOW = 60.0
STORM_LIMIT = 5
# What a plaintext signing secret starts with: every rule's secret is ``whsec_…``, and rules
# created before secrets were sealed keep it so until a process with the key seals it.
LEGACY_PREFIX = "whsec_"


@dataclass(frozen=True)
class AlertRule:
    id: str
    env: str
    event: str
    task_id: str | None
    queue: str | None
    older_than: float | None
    webhook_url: str
    format: str
    created_at: float
    # The signing secret is not here: it is shown once, at creation, and read only by the
    # sender (``AlertStore.due_deliveries``), sealed (``outlast/_secret_box.py``).


@dataclass(frozen=True)
class AlertAttempt:
    n: int
    at: float
    status_code: int | None
    error: str | None
    duration: float


@dataclass(frozen=True)
class AlertDelivery:
    id: str
    env: str
    rule_id: str
    event: str
    payload: dict[str, Any]
    status: str  # pending | delivered | failed
    attempts: int
    created_at: float
    next_at: float
    delivered_at: float | None
    summary_of: int  # > 0: a storm summary standing for this many events
    attempt_log: list[AlertAttempt] = field(default_factory=list)


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed by a sender for a short lease, with what it needs to send it."""

    id: str
    event: str
    payload: dict[str, Any]
    attempts: int  # made before this one
    url: str
    format: str
    rule_id: str
    # The rule's signing secret as stored: sealed (``outlast/_secret_box.py``), or, for a
    # rule created before secrets were sealed, the plaintext ``whsec_…`` (``LEGACY_PREFIX``).
    secret: str = field(repr=False)

    @property
    def legacy(self) -> bool:
        """Whether the secret is still plaintext (a sealed one is a Fernet token, gAAAAA…)."""
        return self.secret.startswith(LEGACY_PREFIX)


@dataclass(frozen=True)
class ScanReport:
    failures: int = 0  # failed runs newly grouped
    alerts: int = 0  # deliveries queued


@dataclass(frozen=True)
class ErrorGroup:
    env: str
    fingerprint: str
    exc_type: str
    message: str
    frame: str
    status: str  # open | resolved | ignored
    count: int
    first_seen: float
    last_seen: float
    sample_run_id: str
    resolved_at: float | None
    reopened: int
    tasks: dict[str, int] = field(default_factory=dict)  # task id -> failures
    # task code version -> failures, most first: filled by ``error_group``, empty in
    # listings; failures of runs without a version (grouped before 0013) are left out
    versions: dict[str, int] = field(default_factory=dict)
    # (bucket start, failures): filled by ``error_group``, empty in listings
    histogram: list[tuple[float, int]] = field(default_factory=list)


class AlertStore(abc.ABC):
    """Alert rules, the outbox of deliveries, and the scans that fill it (the tick's)."""

    url: str  # the database's: for SQLite, the encryption key may be beside it

    @abc.abstractmethod
    def create_alert_rule(self, rule: AlertRule, secret: str) -> None:
        """Store a rule with its signing secret, sealed by the caller."""

    @abc.abstractmethod
    def seal_alert_secrets(self, seal: Callable[[str], str]) -> int:
        """Seal the signing secrets still stored in plaintext (rules created before
        secrets were sealed) with ``seal``; return how many. Safe to run from any number
        of processes at once: a secret is replaced only if it is still the plaintext."""

    @abc.abstractmethod
    def list_alert_rules(self, env: str) -> list[AlertRule]: ...

    @abc.abstractmethod
    def delete_alert_rule(self, env: str, rule_id: str) -> bool: ...

    @abc.abstractmethod
    def list_alert_deliveries(
        self, env: str, rule_id: str | None = None, limit: int = 50
    ) -> list[AlertDelivery]:
        """Newest first, each with its attempts."""

    @abc.abstractmethod
    def raise_alert(
        self,
        env: str,
        event: str,
        data: Mapping[str, Any],
        *,
        task_id: str | None = None,
        queue: str | None = None,
        once: str | None = None,
    ) -> int:
        """Queue a delivery of ``event`` to every rule of ``env`` that matches it, within
        the storm limit; return how many deliveries were queued or summarized. With
        ``once``, only the first raise of that key (per env and event) does anything,
        however many processes raise it (a usage spike: once per task and period)."""

    @abc.abstractmethod
    def alert_rule_envs(self, event: str) -> list[str]:
        """The environments with a rule for ``event`` (a check nobody subscribes to
        need not run)."""

    @abc.abstractmethod
    def due_deliveries(self, limit: int = 20, lease: float = 30.0) -> list[DueDelivery]:
        """Claim pending deliveries that are due, for ``lease`` seconds."""

    @abc.abstractmethod
    def record_alert_attempt(
        self,
        delivery_id: str,
        *,
        status_code: int | None,
        error: str | None,
        duration: float,
        retry_at: float | None,
    ) -> None:
        """Log one attempt. No error: delivered. Else pending until ``retry_at``, or
        failed for good when it is None."""

    @abc.abstractmethod
    def scan_failures(self, limit: int = 500, lag: float = 10.0) -> ScanReport:
        """Group runs that failed since the last scan and queue their alerts."""

    @abc.abstractmethod
    def prune_alerts(self, older_than: float = 30 * 86400.0) -> int:
        """Forget deliveries sent or given up and failure occurrences older than this
        (error groups keep their totals); return how many rows went."""

    @abc.abstractmethod
    def check_alert_conditions(self) -> int:
        """Raise queue.backlog and no_worker alerts whose condition began; return how many."""


class ErrorStore(abc.ABC):
    """The errors page: failures grouped by fingerprint."""

    @abc.abstractmethod
    def list_error_groups(
        self, env: str, status: str | None = None, limit: int = 100
    ) -> list[ErrorGroup]:
        """Most recently seen first."""

    @abc.abstractmethod
    def error_group(
        self, env: str, fingerprint: str, bucket: float = 3600.0
    ) -> ErrorGroup | None:
        """One group with its tasks and its failures per ``bucket`` seconds."""

    @abc.abstractmethod
    def set_error_group_status(self, env: str, fingerprint: str, status: str) -> bool:
        """Resolve, ignore or reopen a group; False if there is none."""
