"""Usage rollups as the store hands them out: one ``UsageDay`` per (env, task, UTC day),
the duration histograms that let percentiles span any number of days, and the roles a
store plays for usage (``UsageStore`` to read, ``UsageRollups`` to fold).

Data only, no I/O: the SQL part is ``_sql_usage.py``; reports, spikes and advice are
``outlast/_usage.py`` and ``outlast/_advise.py``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field, fields

DAY = 86400.0

# Histogram buckets grow by 10% from 1 ms: a percentile read from them is within 5% of
# the true value, and a day of any number of runs is a few dozen integers.
_BASE = 0.001
_GROWTH = 1.1


def bucket(seconds: float) -> int:
    """The histogram bucket of a duration (bucket 0 holds everything up to 1 ms)."""
    if seconds <= _BASE:
        return 0
    return max(0, math.ceil(math.log(seconds / _BASE) / math.log(_GROWTH)))


def bucket_value(index: int) -> float:
    """A bucket's upper edge, in seconds: what a percentile that lands in it reports."""
    return _BASE * _GROWTH**index


def percentile(hist: dict[str, int], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of a histogram; 0 for an empty one."""
    total = sum(hist.values())
    if total <= 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(hist, key=int):
        seen += hist[index]
        if seen >= rank:
            return bucket_value(int(index))
    return bucket_value(max(int(i) for i in hist))


def merge_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + int(v)


@dataclass
class UsageDay:
    """What the runs of one task in one environment, created on one UTC day, used.

    Counts are of finished runs; ``active_seconds`` is the time they executed (every
    attempt, without queued time or parked waits), the run-minutes a bill is made of."""

    env: str
    task_id: str
    day: int  # UTC day start, epoch seconds
    runs: int = 0
    completed: int = 0
    failed: int = 0  # FAILED or TIMED_OUT
    attempts: int = 0
    retried: int = 0  # runs that took more than one attempt
    recovered: int = 0  # runs that failed an attempt and then completed
    active_seconds: float = 0.0
    queued_seconds: float = 0.0
    waited_seconds: float = 0.0
    max_active: float = 0.0
    max_duration: float = 0.0
    peak_concurrency: int = 0
    child_runs: int = 0
    steps_executed: int = 0
    steps_replayed: int = 0
    durations: dict[str, int] = field(default_factory=dict)  # started -> finished
    actives: dict[str, int] = field(default_factory=dict)  # active seconds per run
    waits: dict[str, int] = field(default_factory=dict)  # by kind
    children: dict[str, int] = field(default_factory=dict)  # child runs by task

    def add(self, other: UsageDay) -> None:
        """Fold ``other`` (same task, any day) into this one."""
        for f in fields(self):
            if f.name in ("env", "task_id", "day"):
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                merge_counts(mine, theirs)
            elif f.name in ("max_active", "max_duration", "peak_concurrency"):
                setattr(self, f.name, max(mine, theirs))
            else:
                setattr(self, f.name, mine + theirs)


@dataclass(frozen=True)
class SpikeEvidence:
    """What the runs of one task in a period say about why there were so many."""

    runs: int
    no_key_runs: int  # runs without an idempotency key
    repeated_payloads: int  # of those, runs whose payload another run had already
    key_shares: list[tuple[str, int]]  # runs per concurrency key, largest first
    error_types: list[tuple[str, int]]  # failed attempts per error type, largest first
    schedule_fires: int  # cron slots fired for the task in the period
    schedule_fires_before: int  # in the same length of time just before it


class UsageRollups(abc.ABC):
    """The scheduler's part in usage: fold finished runs into the daily rollups."""

    @abc.abstractmethod
    def aggregate_usage(self, *, limit: int = 5000, grace: float = 60.0) -> int:
        """Fold up to ``limit`` runs finished more than ``grace`` seconds ago (and not
        folded yet) into the daily rollups, and sample concurrency and queue limits;
        returns the runs folded. Safe from any number of processes: each run once."""


class UsageStore(abc.ABC):
    """What usage reports, spikes and advice read (the dashboard's, the API's, the CLI's)."""

    @abc.abstractmethod
    def usage_days(self, env: str, since: float, task_id: str | None = None) -> list[UsageDay]:
        """Rollups of runs created since ``since`` (whole UTC days), including runs
        finished since the last fold, so a report is current without waiting for it."""

    @abc.abstractmethod
    def queue_saturation(self, env: str, since: float) -> dict[str, float]:
        """Seconds each queue sat at its concurrency or rate limit with ready runs."""

    @abc.abstractmethod
    def spike_evidence(
        self, env: str, task_id: str, since: float, until: float
    ) -> SpikeEvidence: ...

    @abc.abstractmethod
    def scheduled_tasks(self, env: str) -> set[str]:
        """Tasks with an active cron schedule."""
