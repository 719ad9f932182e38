"""``outlast advise``: which of the five conditions each task really trips, judged from its
observed runs (the usage rollups), with the evidence and a verdict in plain words.

The five conditions (README, "Do you need it?"): (1) past the function time wall,
(2) several steps with state in between, (3) retries with backoff, (4) fan-out under
concurrency control, (5) durable pauses. A task that trips none could run inline in the
request, after the response, or as a plain cron job; one with too few runs is not judged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._usage import total
from .store._usage_base import UsageDay, percentile
from .store.base import DashboardStore

REQUEST_WALL = 10.0  # seconds: what fits in a web request
SERVERLESS_WALL = 300.0  # seconds: what fits in a serverless function
MIN_RUNS = 20


@dataclass
class Condition:
    number: int
    name: str
    tripped: bool
    evidence: str
    reason: str = ""  # the short reason the verdict quotes when tripped
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Advice:
    task_id: str
    runs: int
    verdict: str  # needs_outlast | inline | after_response | cron | too_few_runs
    summary: str
    tripped: list[int]
    conditions: list[Condition]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt_seconds(s: float) -> str:
    """A duration as a person says it: 80 ms, 2.1 s, 14 min, 3.5 h, 2.0 days."""
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def advise(
    store: DashboardStore,
    env: str,
    *,
    since: float,
    task_id: str | None = None,
    now: float | None = None,
    request_wall: float = REQUEST_WALL,
    serverless_wall: float = SERVERLESS_WALL,
    min_runs: int = MIN_RUNS,
) -> list[Advice]:
    """Advice for each task with runs in the last ``since`` seconds (and each task a
    worker declared, even without runs), busiest first."""
    when = store.now() if now is None else now
    days = store.usage_days(env, when - since, task_id)
    per: dict[str, list[UsageDay]] = {}
    for d in days:
        per.setdefault(d.task_id, []).append(d)
    defs = {t.id: t for t in store.list_tasks(env)}
    for t in defs:
        if task_id is None or t == task_id:
            per.setdefault(t, [])
    scheduled = store.scheduled_tasks(env) | {t for t, d in defs.items() if d.spec.get("cron")}
    saturation = store.queue_saturation(env, when - since)
    out = []
    for t, ds in per.items():
        tot = total(ds, env, t)
        spec = defs[t].spec if t in defs else {}
        queues = {defs[t].queue} if t in defs else set()
        queues |= {defs[c].queue for c in tot.children if c in defs}
        sat = {q: saturation[q] for q in sorted(queues) if saturation.get(q, 0) > 0}
        conditions = _conditions(tot, spec, sat, request_wall, serverless_wall)
        out.append(_verdict(tot, conditions, t in scheduled, min_runs, request_wall))
    out.sort(key=lambda a: (-a.runs, a.task_id))
    return out


def _conditions(
    d: UsageDay,
    spec: dict[str, Any],
    saturated: dict[str, float],
    request_wall: float,
    serverless_wall: float,
) -> list[Condition]:
    n = max(d.runs, 1)
    p95 = percentile(d.actives, 0.95)
    walls = f"walls: request {fmt_seconds(request_wall)}, function {fmt_seconds(serverless_wall)}"
    c1 = Condition(
        1, "past the function time wall", p95 > serverless_wall,
        f"p95 {fmt_seconds(p95)} executing, longest {fmt_seconds(d.max_active)} ({walls})",
        f"p95 {fmt_seconds(p95)}",
        {"p95_seconds": p95, "longest_seconds": d.max_active,
         "request_wall": request_wall, "serverless_wall": serverless_wall},
    )
    steps = d.steps_executed / n
    c2 = Condition(
        2, "several steps with state in between", steps >= 2,
        f"{steps:.1f} steps per run; retries replayed {d.steps_replayed:,} finished steps "
        "instead of running them again",
        f"{steps:.1f} steps per run",
        {"steps_per_run": steps, "steps_replayed": d.steps_replayed},
    )
    share = d.recovered / n
    retry = spec.get("retry") or {}
    backoff = (
        f"backoff: up to {retry.get('max_attempts')} attempts, factor {retry.get('factor')}, from "
        f"{fmt_seconds(float(retry.get('min_delay') or 0))} to "
        f"{fmt_seconds(float(retry.get('max_delay') or 0))}"
        if retry else "backoff: not declared by a worker"
    )
    c3 = Condition(
        3, "retries with backoff", d.recovered > 0,
        f"{d.recovered:,} of {d.runs:,} runs ({share:.0%}) failed an attempt and then "
        f"succeeded; {d.failed:,} failed for good; {backoff}",
        f"{share:.0%} of runs succeeded on a retry",
        {"recovered_runs": d.recovered, "recovered_share": share, "failed_runs": d.failed,
         "retry": retry},
    )
    children = d.child_runs / n
    at_limit = sum(saturated.values())
    sat_text = ", ".join(f"{q} {fmt_seconds(s)}" for q, s in saturated.items())
    c4 = Condition(
        4, "fan-out under concurrency control", children >= 2 or at_limit > 0,
        f"{children:.1f} child runs per run"
        + (f" ({', '.join(sorted(d.children))})" if d.children else "")
        + (f"; queues at their limit: {sat_text}" if sat_text else "; no queue sat at a limit"),
        f"{children:.1f} children per run" + (f", queues at limit {fmt_seconds(at_limit)}"
                                             if at_limit else ""),
        {"children_per_run": children, "saturated_seconds": saturated},
    )
    waits = sum(d.waits.values()) / n
    kinds = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(d.waits.items()))
    parked = d.waited_seconds / n
    c5 = Condition(
        5, "durable pauses", waits > 0,
        f"{waits:.1f} waits per run" + (f" ({kinds})" if kinds else "")
        + f"; parked {fmt_seconds(parked)} per run on average",
        f"{waits:.1f} waits per run, parked {fmt_seconds(parked)} on average",
        {"waits_per_run": waits, "waits_by_kind": dict(d.waits), "parked_seconds_per_run": parked},
    )
    return [c1, c2, c3, c4, c5]


def _verdict(
    d: UsageDay, conditions: list[Condition], scheduled: bool, min_runs: int, request_wall: float
) -> Advice:
    tripped = [c.number for c in conditions if c.tripped]
    if d.runs < min_runs:
        return Advice(
            d.task_id, d.runs, "too_few_runs",
            f"too few runs to judge: {d.runs:,} finished in the period, advice needs "
            f"{min_runs:,}", tripped, conditions,
        )
    if tripped:
        why = ", ".join(f"{c.number} ({c.reason})" for c in conditions if c.tripped)
        return Advice(d.task_id, d.runs, "needs_outlast", f"needs outlast: {why}", tripped,
                      conditions)
    p95 = percentile(d.actives, 0.95)
    steps = d.steps_executed / max(d.runs, 1)
    facts = (
        f"trips none over {d.runs:,} runs: p95 {fmt_seconds(p95)}, "
        f"{steps:.0f} step{'s' if round(steps) != 1 else ''}, no retries, no waits"
    )
    if scheduled:
        return Advice(d.task_id, d.runs, "cron", f"{facts} — it could be a plain cron job",
                      tripped, conditions)
    if p95 <= request_wall:
        return Advice(
            d.task_id, d.runs, "inline",
            f"{facts} — it could run inline in the request, or after the response",
            tripped, conditions,
        )
    return Advice(
        d.task_id, d.runs, "after_response",
        f"{facts} — too long for a request; it could run after the response, or in a "
        "serverless function", tripped, conditions,
    )
