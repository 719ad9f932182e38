"""The dashboard's Usage page (runs and run-minutes per task over time, top tasks by
run-minutes, cost at the operator's price, spikes explained) and Advice page (which of
the five conditions each task trips, and the verdict)."""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import Response

from ..._advise import MIN_RUNS, advise, fmt_seconds
from ..._errors import ValidationError
from ..._usage import By, parse_since, price_per_run_minute, usage_report
from ._svg import hbars, stacked_bars
from ._web import Ctx

SPANS = ("7d", "30d", "90d")
_TOP = 5  # tasks drawn by name in the charts; the rest are "other"


def _since(ctx: Ctx) -> tuple[str, float]:
    text = ctx.arg("since", "30d") or "30d"
    try:
        return text, parse_since(text)
    except ValidationError:
        return "30d", parse_since("30d")


def usage_page(ctx: Ctx) -> Response:
    since_text, since = _since(ctx)
    by: By = "week" if ctx.arg("by") == "week" else "day"
    report = usage_report(ctx.store, ctx.env, since=since, task_id=_task(ctx), by=by,
                          price=price_per_run_minute(ctx.store))
    top = [t["task_id"] for t in report["tasks"][:_TOP]]
    periods = sorted({s["period"] for s in report["series"]})
    labels = [time.strftime("%m-%d", time.gmtime(p)) for p in periods]
    runs: dict[str, list[float]] = {t: [0.0] * len(periods) for t in [*top, "other"]}
    minutes: dict[str, list[float]] = {t: [0.0] * len(periods) for t in [*top, "other"]}
    index = {p: i for i, p in enumerate(periods)}
    for s in report["series"]:
        name = s["task_id"] if s["task_id"] in top else "other"
        runs[name][index[s["period"]]] += s["runs"]
        minutes[name][index[s["period"]]] += s["run_minutes"]
    charts = {
        "runs": stacked_bars(labels, runs, lambda v: f"{v:,.0f} runs", title="Runs per " + by),
        "minutes": stacked_bars(labels, minutes, _minutes, title="Run-minutes per " + by),
        "top": hbars([(t["task_id"], t["run_minutes"]) for t in report["tasks"][:10]],
                     _minutes, title="Top tasks by run-minutes"),
    }
    return ctx.render("usage.html", active="usage", report=report, charts=charts,
                      legend=[*top, "other"], spans=SPANS, since=since_text, by=by)


def advice_page(ctx: Ctx) -> Response:
    since_text, since = _since(ctx)
    raw = ctx.arg("min_runs")
    min_runs = int(raw) if raw.isdigit() and int(raw) > 0 else MIN_RUNS
    found = advise(ctx.store, ctx.env, since=since, task_id=_task(ctx), min_runs=min_runs)
    return ctx.render("advice.html", active="advice", advice=found, spans=SPANS,
                      since=since_text)


def _task(ctx: Ctx) -> str | None:
    return ctx.arg("task").replace("\x00", "") or None  # no database stores a NUL


def _minutes(v: float) -> str:
    return fmt_seconds(v * 60.0) if v else "0"


def routes_for(r: Any) -> list[Any]:
    """The pages, for ``views.routes``: ``r`` is ``Dashboard.route``."""
    return [r("/usage", usage_page), r("/advice", advice_page)]
