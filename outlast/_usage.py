"""Usage per task, and spikes explained: what ``outlast usage``, ``GET /api/v1/usage`` and
the dashboard's Usage page show, from the store's daily rollups (``store/_sql_usage.py``).

Run-minutes are the time runs executed, every attempt included, parked waits and queued
time not: a task that sleeps durably for an hour between two 2-second steps bills 4 s.
``find_spikes`` is the one entry point for anything that wants to raise the alarm (the
report here, and alerts once they exist).
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ._errors import ValidationError
from .store._usage_base import DAY, UsageDay, percentile
from .store.base import DashboardStore

By = Literal["day", "week"]
PRICE_ENV = "OUTLAST_PRICE_PER_RUN_MINUTE"
PRICE_SETTING = "usage.price_per_run_minute"
SPIKE_FACTOR = 3.0
_UNITS = {"m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}


def parse_since(text: str, field_name: str = "since") -> float:
    """``30d``, ``12h``, ``2w``, ``90m`` as seconds; a clear error naming the field."""
    m = re.fullmatch(r"\s*(\d{1,6}(?:\.\d{1,6})?)\s*([mhdw])\s*", text or "")
    if m is None or not 0 < float(m.group(1)) * _UNITS[m.group(2)] <= 100 * 365 * DAY:
        raise ValidationError(
            f"{field_name} must be a positive span such as 30d, 12h, 2w or 90m, not {text!r}",
            field=field_name,
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def price_per_run_minute(
    store: DashboardStore | None = None, explicit: float | None = None
) -> float | None:
    """The operator's price: ``explicit`` (a flag), else OUTLAST_PRICE_PER_RUN_MINUTE,
    else the ``usage.price_per_run_minute`` setting in the store; None when unset."""
    if explicit is not None:
        return explicit
    raw = os.environ.get(PRICE_ENV)
    if not raw and store is not None:
        raw = store.get_setting(PRICE_SETTING)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(
            f"{PRICE_ENV} must be a number (a price per run-minute), not {raw!r}",
            field=PRICE_ENV,
        ) from None
    return value if value >= 0 else None


def total(days: list[UsageDay], env: str, task_id: str) -> UsageDay:
    """Every day of ``days`` folded into one (for one task)."""
    out = UsageDay(env=env, task_id=task_id, day=0)
    for d in days:
        out.add(d)
    return out


def task_figures(d: UsageDay, price: float | None = None) -> dict[str, Any]:
    """One task's usage as plain numbers (what the CLI, API and dashboard show)."""
    minutes = d.active_seconds / 60.0
    figures: dict[str, Any] = {
        "task_id": d.task_id,
        "runs": d.runs,
        "completed": d.completed,
        "failures": d.failed,
        "attempts": d.attempts,
        "retries": d.attempts - d.runs,
        "run_minutes": round(minutes, 6),
        "queued_minutes": round(d.queued_seconds / 60.0, 6),
        "waited_minutes": round(d.waited_seconds / 60.0, 6),
        "p50_seconds": round(percentile(d.durations, 0.50), 6),
        "p95_seconds": round(percentile(d.durations, 0.95), 6),
        "p95_active_seconds": round(percentile(d.actives, 0.95), 6),
        "peak_concurrency": d.peak_concurrency,
        "child_runs": d.child_runs,
        "waits": dict(sorted(d.waits.items())),
        "steps_executed": d.steps_executed,
        "steps_replayed": d.steps_replayed,
    }
    if price is not None:
        figures["cost"] = round(minutes * price, 6)
    return figures


def period_start(ts: float, by: By) -> int:
    """The start of the day, or of the week (Monday, UTC), that ``ts`` falls in."""
    day = int(ts // DAY * DAY)
    if by == "week":
        # 1970-01-01 was a Thursday: Mondays are 4 days after each multiple of 7 days.
        return int((day - 4 * DAY) // (7 * DAY) * (7 * DAY) + 4 * DAY)
    return day


@dataclass
class Spike:
    """A task that ran far more this period than its trailing median, and why."""

    task_id: str
    period: int  # period start, epoch seconds
    metric: str  # "runs" or "run-minutes"
    value: float
    median: float
    ratio: float
    causes: list[str] = field(default_factory=list)  # likeliest first
    kinds: list[str] = field(default_factory=list)  # machine-readable, same order

    def summary(self) -> str:
        what = f"{self.value:,.0f} runs" if self.metric == "runs" else (
            f"{self.value:,.1f} run-minutes"
        )
        return f"{self.task_id}: {what}, {self.ratio:.1f} times its median ({self.median:,.1f})"


def find_spikes(
    store: DashboardStore,
    env: str,
    *,
    now: float | None = None,
    by: By = "day",
    task_id: str | None = None,
    trailing: int | None = None,
    factor: float = SPIKE_FACTOR,
    explain: bool = True,
) -> list[Spike]:
    """Tasks whose runs or run-minutes in the current period (today, or this week) exceed
    ``factor`` times their median over the ``trailing`` periods before it, each with the
    evidence for its likely cause (unless not ``explain``: the evidence reads runs).
    The function the ``usage.spike`` alert calls (``SpikeAlerts``)."""
    when = store.now() if now is None else now
    step = DAY if by == "day" else 7 * DAY
    n = trailing or (7 if by == "day" else 4)
    current = period_start(when, by)
    days = store.usage_days(env, current - n * step, task_id)
    per: dict[str, dict[int, list[UsageDay]]] = {}
    for d in days:
        per.setdefault(d.task_id, {}).setdefault(period_start(d.day, by), []).append(d)
    spikes: list[Spike] = []
    for task, periods in sorted(per.items()):
        now_t = total(periods.get(current, []), env, task)
        starts = [int(current - i * step) for i in range(1, n + 1)]
        before = [total(periods.get(p, []), env, task) for p in starts]
        for metric, value, past in (
            ("runs", float(now_t.runs), [float(b.runs) for b in before]),
            ("run-minutes", now_t.active_seconds / 60.0, [b.active_seconds / 60 for b in before]),
        ):
            median = statistics.median(past)
            if median > 0 and value > factor * median:
                spike = Spike(task, current, metric, value, median, value / median)
                if explain:
                    _explain(store, env, spike, now_t, before, when)
                spikes.append(spike)
                break  # one flag per task: runs first, then run-minutes
    return spikes


def _explain(
    store: DashboardStore,
    env: str,
    spike: Spike,
    now_t: UsageDay,
    before: list[UsageDay],
    when: float,
) -> None:
    ev = store.spike_evidence(env, spike.task_id, float(spike.period), when + 1e-6)
    if ev.no_key_runs and ev.repeated_payloads * 2 >= max(ev.runs, 1):
        spike.kinds.append("missing_idempotency_key")
        spike.causes.append(
            f"missing idempotency key: {ev.repeated_payloads:,} of {ev.runs:,} runs repeat a "
            "payload another run had in this period, and carry no idempotency key"
        )
    per_run = now_t.attempts / now_t.runs if now_t.runs else 0.0
    past_runs = sum(b.runs for b in before)
    past = sum(b.attempts for b in before) / past_runs if past_runs else 1.0
    if per_run >= 1.5 and per_run >= 1.5 * past:
        top = f", mostly `{ev.error_types[0][0]}`" if ev.error_types else ""
        spike.kinds.append("retry_storm")
        spike.causes.append(
            f"retry storm: {per_run:.1f} attempts per run (against {past:.1f} before){top}"
        )
    if ev.key_shares and ev.runs:
        key, count = ev.key_shares[0]
        if key and count * 2 > ev.runs:
            spike.kinds.append("one_concurrency_key")
            spike.causes.append(
                f"one concurrency key: {key} is {100 * count / ev.runs:.0f}% of the runs"
            )
    if ev.schedule_fires > 2 * max(ev.schedule_fires_before, 1):
        spike.kinds.append("schedule")
        spike.causes.append(
            f"a schedule fires more often: {ev.schedule_fires:,} slots against "
            f"{ev.schedule_fires_before:,} in the period before"
        )
    if not spike.causes:
        spike.kinds.append("unexplained")
        spike.causes.append("no single cause in the evidence: more triggers than usual")


def usage_report(
    store: DashboardStore,
    env: str,
    *,
    since: float,
    task_id: str | None = None,
    by: By = "day",
    now: float | None = None,
    price: float | None = None,
) -> dict[str, Any]:
    """Usage per task over the last ``since`` seconds: totals, a series per period,
    and the spikes. JSON-ready; what every view of usage renders."""
    when = store.now() if now is None else now
    start = when - since
    days = store.usage_days(env, start, task_id)
    tasks: dict[str, list[UsageDay]] = {}
    series: dict[tuple[int, str], UsageDay] = {}
    for d in days:
        tasks.setdefault(d.task_id, []).append(d)
        key = (period_start(d.day, by), d.task_id)
        series.setdefault(key, UsageDay(env=env, task_id=d.task_id, day=key[0])).add(d)
    rows = [task_figures(total(ds, env, t), price) for t, ds in tasks.items()]
    rows.sort(key=lambda r: (-r["run_minutes"], r["task_id"]))
    everything = total(days, env, "")
    totals = {k: v for k, v in task_figures(everything, price).items() if k != "task_id"}
    return {
        "env": env,
        "since": start,
        "until": when,
        "by": by,
        "price_per_run_minute": price,
        "totals": totals,
        "tasks": rows,
        "series": [
            {"period": p, "task_id": t, "runs": d.runs, "run_minutes": _minutes(d)}
            for (p, t), d in sorted(series.items())
        ],
        "spikes": [
            {**asdict(s), "summary": s.summary()}
            for s in find_spikes(store, env, now=when, by=by, task_id=task_id)
        ],
    }


def _minutes(d: UsageDay) -> float:
    return round(d.active_seconds / 60.0, 6)


class SpikeAlerts:
    """The scheduler's part in spikes: about once a minute, in each environment with a
    ``usage.spike`` alert rule, raise the alert for each new spike, once per task and
    period however many schedulers run (``raise_alert(once=...)``), with its evidence.
    A spike this process raised already is not looked at again (its evidence reads runs)."""

    EVENT = "usage.spike"

    def __init__(self, store: DashboardStore, *, every: float = 60.0) -> None:
        self.store = store
        self.every = every
        self._at = -math.inf
        self._raised: set[tuple[str, str]] = set()  # (env, once key)

    def step(self) -> int:
        """Raise what is new; return the deliveries queued."""
        now = time.monotonic()
        if now - self._at < self.every:
            return 0
        self._at = now
        queued = 0
        for env in self.store.alert_rule_envs(self.EVENT):
            for found in find_spikes(self.store, env, explain=False):
                key = f"{found.task_id}@{found.period}"
                if (env, key) in self._raised:
                    continue
                spike = next(iter(find_spikes(self.store, env, task_id=found.task_id)), found)
                data = {**asdict(spike), "summary": spike.summary()}
                queued += self.store.raise_alert(
                    env, self.EVENT, data, task_id=spike.task_id, once=key
                )
                self._raised.add((env, key))
        return queued
