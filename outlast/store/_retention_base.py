"""Retention, the store's side: policies and the batches that prune finished runs.

A policy keeps finished runs (COMPLETED, FAILED, CANCELED, EXPIRED, TIMED_OUT) for a
number of days after they finished, per environment and per task (an override). A
``PruneRule`` is one policy turned into a cutoff; ``prune_batch`` deletes up to ``limit``
runs it covers, with their journal, events, tags, waits and the waitpoints they created,
in one short transaction. A run is never covered while it, its parent or its root is
unfinished, nor while one of its children is. The loop around it (defaults, rules, the
bound per tick, dry runs) is ``outlast/_retention.py``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class RetentionPolicy:
    env: str
    task_id: str | None  # None: the environment's policy
    days: float | None  # None: keep for ever
    updated_at: float = 0.0


@dataclass(frozen=True)
class PruneRule:
    """The finished runs of ``env`` that finished before ``cutoff`` (epoch seconds) and
    belong to ``task_id`` (when set) or to no task in ``except_tasks``."""

    env: str
    cutoff: float
    task_id: str | None = None
    except_tasks: tuple[str, ...] = ()


class RetentionStore(abc.ABC):
    """The store methods retention uses (implemented by ``_sql_retention.RetentionMixin``)."""

    @abc.abstractmethod
    def retention_envs(self) -> list[str]:
        """Environments that may hold runs or have a policy."""

    @abc.abstractmethod
    def retention_policies(self, env: str) -> list[RetentionPolicy]:
        """The environment's policy (if set) first, then per-task overrides by task id."""

    @abc.abstractmethod
    def set_retention_policy(self, env: str, task_id: str | None, days: float | None
                             ) -> RetentionPolicy:
        """Set (or replace) a policy; ``days`` None keeps finished runs for ever."""

    @abc.abstractmethod
    def delete_retention_policy(self, env: str, task_id: str | None) -> bool:
        """Remove a policy (the default applies again); False if there was none."""

    @abc.abstractmethod
    def count_prunable(self, rule: PruneRule) -> int:
        """How many runs ``prune_batch`` would delete for this rule now (the dry run)."""

    @abc.abstractmethod
    def prune_batch(self, rule: PruneRule, limit: int) -> list[str]:
        """Delete up to ``limit`` runs the rule covers, and everything attached to them,
        in one transaction; the ids deleted. On PostgreSQL concurrent pruners take
        disjoint batches (SKIP LOCKED) and no lock is held on a live run."""

    @abc.abstractmethod
    def prune_bulk_actions(self, env: str, before: float) -> int:
        """Delete ended bulk actions that finished before ``before``."""
