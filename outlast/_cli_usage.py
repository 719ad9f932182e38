"""``outlast usage`` and ``outlast advise``: usage per task (runs, run-minutes, spikes) and
which of the five conditions each task trips. Self-contained (its own flags with their
``OUTLAST_*`` twins), registered by ``cli.py`` through ``add_commands``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ._advise import MIN_RUNS, REQUEST_WALL, SERVERLESS_WALL, Advice, advise
from ._usage import PRICE_ENV, parse_since, price_per_run_minute, usage_report


def _flag(p: argparse.ArgumentParser, name: str, help: str, default: Any, type: Any = str) -> None:
    env = "OUTLAST_" + name.lstrip("-").replace("-", "_").upper()
    raw = os.environ.get(env)
    value = type(raw) if raw not in (None, "") else default
    shown = f" (default: {default})" if default is not None else ""
    p.add_argument(name, type=type, default=value, help=f"{help}{shown} [env: {env}]")


def _common(p: argparse.ArgumentParser) -> None:
    _flag(p, "--database-url", "sqlite:///path.db or postgresql://…",
          "sqlite:///.outlast/outlast.db")
    _flag(p, "--env", "environment name", "dev")
    p.add_argument("--task", help="one task id (default: every task)")
    p.add_argument("--since", default="30d", help="how far back: 30d, 12h, 2w (default: 30d)")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("usage", help="runs, run-minutes and spikes per task")
    _common(p)
    p.add_argument("--by", choices=("day", "week"), default="day", help="period of the series")
    p.add_argument("--price", type=float, default=None,
                   help=f"price per run-minute (default: ${PRICE_ENV}, or the "
                   "usage.price_per_run_minute setting)")
    p.set_defaults(fn=cmd_usage)
    p = sub.add_parser("advise", help="which of the five conditions each task trips, and "
                       "whether it needs outlast at all")
    _common(p)
    _flag(p, "--request-wall", "seconds a request may take", REQUEST_WALL, float)
    _flag(p, "--serverless-wall", "seconds a serverless function may take", SERVERLESS_WALL,
          float)
    _flag(p, "--min-runs", "fewer finished runs than this are not judged", MIN_RUNS, int)
    p.set_defaults(fn=cmd_advise)


def _store(args: argparse.Namespace) -> Any:
    from .store import open_store

    store = open_store(args.database_url)
    store.check_schema()
    return store


def cmd_usage(args: argparse.Namespace) -> int:
    since = parse_since(args.since, "--since")
    store = _store(args)
    try:
        price = price_per_run_minute(store, args.price)
        report = usage_report(store, args.env, since=since, task_id=args.task, by=args.by,
                              price=price)
    finally:
        store.close()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(render_usage(report))
    return 0


def render_usage(report: dict[str, Any]) -> str:
    price = report["price_per_run_minute"]
    head = f"{'task':<28} {'runs':>8} {'attempts':>8} {'failed':>6} {'run-min':>10}"
    head += f" {'queued-min':>10} {'waited-min':>10} {'p50':>8} {'p95':>8} {'peak':>5}"
    head += f" {'cost':>9}" if price is not None else ""
    lines = [head]
    for t in report["tasks"]:
        line = (
            f"{t['task_id'][:28]:<28} {t['runs']:>8,} {t['attempts']:>8,} {t['failures']:>6,} "
            f"{t['run_minutes']:>10,.2f} {t['queued_minutes']:>10,.2f} "
            f"{t['waited_minutes']:>10,.2f} {t['p50_seconds']:>7.2f}s {t['p95_seconds']:>7.2f}s "
            f"{t['peak_concurrency']:>5}"
        )
        if price is not None:
            line += f" {t.get('cost', 0.0):>9,.2f}"
        lines.append(line)
    if not report["tasks"]:
        lines.append("(no finished runs in the period)")
    tot = report["totals"]
    lines.append(f"total: {tot['runs']:,} runs, {tot['run_minutes']:,.2f} run-minutes"
                 + (f", cost {tot.get('cost', 0.0):,.2f}" if price is not None else ""))
    for s in report["spikes"]:
        lines.append(f"SPIKE {s['summary']}")
        lines.extend(f"  - {c}" for c in s["causes"])
    return "\n".join(lines)


def cmd_advise(args: argparse.Namespace) -> int:
    since = parse_since(args.since, "--since")
    store = _store(args)
    try:
        advice = advise(store, args.env, since=since, task_id=args.task,
                        request_wall=args.request_wall, serverless_wall=args.serverless_wall,
                        min_runs=args.min_runs)
    finally:
        store.close()
    if args.json:
        json.dump([a.to_dict() for a in advice], sys.stdout, indent=2)
        print()
        return 0
    print(render_advice(advice))
    return 0


def render_advice(advice: list[Advice]) -> str:
    if not advice:
        return "no tasks with runs in the period"
    out = []
    for a in advice:
        out.append(f"{a.task_id}: {a.summary}")
        for c in a.conditions:
            mark = "x" if c.tripped else " "
            out.append(f"  [{mark}] {c.number} {c.name}: {c.evidence}")
    return "\n".join(out)
