"""Retention: which finished runs go, and the pruning loop every scheduler runs.

A finished run is kept for a number of days after it finished: the task's override if
it has one, else the environment's policy, else the default (30 days; ``outlast dev``
sets its environment's policy to 7 days when none is set). ``days`` None keeps runs for
ever. The store deletes a run with its journal, events, tags, waits and the waitpoints
it created and its trace context (``store/_retention_base.py``); usage rollups are
separate tables and stay.

The scheduler prunes a bounded batch at a time inside a small time budget per tick, so
pruning a backlog of millions takes many short transactions, never one long one; with
nothing left to prune it looks again after ``idle_interval`` seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ._errors import ValidationError
from .store._retention_base import PruneRule, RetentionStore
from .store._usage_base import UsageRollups
from .store.base import SchedulerStore

log = logging.getLogger(__name__)

DAY = 86400.0
DEFAULT_DAYS = 30.0
DEV_DAYS = 7.0
BATCH = 500


def check_days(days: Any) -> float | None:
    """A policy's days from the edge: a positive number, or None for ever."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days > 0:
        raise ValidationError("days must be a positive number (or null to keep for ever)",
                              field="days")
    if days > 36500:
        raise ValidationError("days must be at most 36500 (or null to keep for ever)",
                              field="days")
    return float(days)


@dataclass(frozen=True)
class EffectivePolicy:
    """What applies in one environment: its days (and whether that is the default) and
    the per-task overrides."""

    env: str
    days: float | None
    is_default: bool
    tasks: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "days": self.days, "default": self.is_default,
                "tasks": dict(self.tasks)}


def effective_policy(store: RetentionStore, env: str, default_days: float | None = DEFAULT_DAYS
                     ) -> EffectivePolicy:
    policies = store.retention_policies(env)
    own = [p for p in policies if p.task_id is None]
    return EffectivePolicy(
        env=env,
        days=own[0].days if own else default_days,
        is_default=not own,
        tasks={p.task_id: p.days for p in policies if p.task_id is not None},
    )


def rules(policy: EffectivePolicy, now: float) -> list[PruneRule]:
    """One rule per task override that keeps runs for a while, and one for every other
    task (excepting all the overridden ones, kept for ever or not)."""
    out = [
        PruneRule(policy.env, now - days * DAY, task_id=task)
        for task, days in sorted(policy.tasks.items()) if days is not None
    ]
    if policy.days is not None:
        out.append(PruneRule(policy.env, now - policy.days * DAY,
                             except_tasks=tuple(sorted(policy.tasks))))
    return out


def _label(rule: PruneRule) -> str:
    return rule.task_id if rule.task_id is not None else "*"


@dataclass
class PruneReport:
    """What a pass pruned (or, dry, would prune): runs per environment and task rule
    ("*" for the environment's policy), and whether it stopped at its bound."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    batches: int = 0
    more: bool = False

    @property
    def runs(self) -> int:
        return sum(n for per_env in self.counts.values() for n in per_env.values())

    def add(self, rule: PruneRule, n: int) -> None:
        per_env = self.counts.setdefault(rule.env, {})
        per_env[_label(rule)] = per_env.get(_label(rule), 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "counts": self.counts, "batches": self.batches,
                "more": self.more}


_FOLD_LIMIT = 5000  # aggregate_usage's default batch: a full one means more may be left


def prune(store: SchedulerStore, *, default_days: float | None = DEFAULT_DAYS,
          env: str | None = None, dry_run: bool = False, batch: int = BATCH,
          max_batches: int | None = None, budget: float | None = None) -> PruneReport:
    """Prune (or, ``dry_run``, count) the finished runs past their policy. Stops after
    ``max_batches`` batches or ``budget`` seconds, with ``more`` set, if given."""
    report = PruneReport()
    started = time.monotonic()
    now = store.now()
    if not dry_run and isinstance(store, UsageRollups):
        # Usage rollups outlive the runs: every finished run is folded before any goes.
        while store.aggregate_usage() >= _FOLD_LIMIT:
            pass
    for e in [env] if env is not None else store.retention_envs():
        policy = effective_policy(store, e, default_days)
        for rule in rules(policy, now):
            if dry_run:
                report.add(rule, store.count_prunable(rule))
                continue
            while True:
                if report.batches and (
                        (max_batches is not None and report.batches >= max_batches)
                        or (budget is not None and time.monotonic() - started > budget)):
                    report.more = True  # at least one batch per pass, then the bound
                    return report
                ids = store.prune_batch(rule, batch)
                report.batches += 1
                report.add(rule, len(ids))
                if len(ids) < batch:
                    break
        if not dry_run and policy.days is not None:
            store.prune_bulk_actions(e, now - policy.days * DAY)
    return report


def ensure_dev_policy(store: RetentionStore, env: str) -> None:
    """``outlast dev`` keeps finished runs DEV_DAYS unless the environment has a policy."""
    if not any(p.task_id is None for p in store.retention_policies(env)):
        store.set_retention_policy(env, None, DEV_DAYS)


class Pruner:
    """The scheduler's share of pruning: at most ``budget`` seconds per step, and after a
    pass that found nothing more, nothing until ``idle_interval`` seconds have passed."""

    def __init__(self, store: SchedulerStore, *, default_days: float | None = DEFAULT_DAYS,
                 batch: int = BATCH, budget: float = 0.05, idle_interval: float = 60.0
                 ) -> None:
        self.store = store
        self.default_days = default_days
        self.batch = batch
        self.budget = budget
        self.idle_interval = idle_interval
        self._next = 0.0
        self.pruned = 0

    def step(self) -> int:
        if time.monotonic() < self._next:
            return 0
        report = prune(self.store, default_days=self.default_days, batch=self.batch,
                       budget=self.budget)
        self.pruned += report.runs
        if not report.more:
            self._next = time.monotonic() + self.idle_interval
        if report.runs:
            log.info("pruned finished runs", extra={"runs": report.runs,
                                                    "batches": report.batches})
        return report.runs
