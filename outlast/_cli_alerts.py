"""``outlast alerts`` (create, list, delete, deliveries) and ``outlast errors`` (list, show,
resolve, ignore, reopen): alert rules and failure groups, straight on the store."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from typing import Any

from . import _alerts


def _db_flags(p: argparse.ArgumentParser) -> None:
    # The same flags and environment twins as every other command's (cli._common).
    url = os.environ.get("OUTLAST_DATABASE_URL") or "sqlite:///.outlast/outlast.db"
    p.add_argument("--database-url", default=url,
                   help="sqlite:///path.db or postgresql://… [env: OUTLAST_DATABASE_URL]")
    p.add_argument("--env", default=os.environ.get("OUTLAST_ENV") or "dev",
                   help="environment name (default: dev) [env: OUTLAST_ENV]")
    p.add_argument("--json", action="store_true", help="print JSON")


def _store(args: argparse.Namespace) -> Any:
    # The CLI's: ``outlast.cli.main`` closes it when the command ends (a PostgreSQL pool
    # left to the garbage collector complains from its own thread).
    from ._cli_common import _store as opened

    return opened(args)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(data, default=str, indent=2))
    else:
        for line in lines:
            print(line)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("alerts", help="webhooks when runs fail, queues back up or no worker "
                       "serves a task")
    cmds = p.add_subparsers(dest="alerts_cmd", required=True)
    q = cmds.add_parser("create", help="create a rule; prints its signing secret once")
    _db_flags(q)
    q.add_argument("--on", required=True, dest="event",
                   help="run.failed | run.timed_out | queue.backlog | no_worker | usage.spike")
    q.add_argument("--task", help="only this task's runs")
    q.add_argument("--queue", help="only this queue")
    q.add_argument("--older-than", help="queue.backlog / no_worker: how old the oldest "
                   "queued run must be (90s, 5m, 2h; defaults 5m / 1m)")
    q.add_argument("--webhook", required=True, help="the URL to POST to")
    q.add_argument("--format", default="json", choices=_alerts.FORMATS)
    q = cmds.add_parser("list", help="rules (never their secrets)")
    _db_flags(q)
    q = cmds.add_parser("delete", help="delete a rule and its unsent deliveries")
    _db_flags(q)
    q.add_argument("rule_id")
    q = cmds.add_parser("deliveries", help="recent deliveries with their attempts")
    _db_flags(q)
    q.add_argument("rule_id", nargs="?")
    q.add_argument("--limit", type=int, default=20)
    p.set_defaults(fn=cmd_alerts)

    p = sub.add_parser("errors", help="failures grouped by fingerprint")
    cmds = p.add_subparsers(dest="errors_cmd", required=True)
    q = cmds.add_parser("list")
    _db_flags(q)
    q.add_argument("--status", choices=("open", "resolved", "ignored"))
    q.add_argument("--limit", type=int, default=50)
    for name in ("show", "resolve", "ignore", "reopen"):
        q = cmds.add_parser(name)
        _db_flags(q)
        q.add_argument("fingerprint")
    p.set_defaults(fn=cmd_errors)


def cmd_alerts(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.alerts_cmd == "create":
        older = _alerts.parse_duration(args.older_than) if args.older_than else None
        rule, secret = _alerts.create_rule(
            store, store.clock, args.env, event=args.event, webhook_url=args.webhook,
            format=args.format, task_id=args.task, queue=args.queue, older_than=older,
        )
        _print(args, {**vars(rule), "secret": secret}, [
            f"created {rule.id}: {rule.event} -> {rule.webhook_url}",
            f"signing secret (shown once, keep it): {secret}",
        ])
        return 0
    if args.alerts_cmd == "list":
        rules = store.list_alert_rules(args.env)
        _print(args, [vars(r) for r in rules], [
            f"{r.id}  {r.event:14} task={r.task_id or '*'} queue={r.queue or '*'} "
            f"{r.format:5} {r.webhook_url}" for r in rules
        ] or ["no alert rules"])
        return 0
    if args.alerts_cmd == "delete":
        if not store.delete_alert_rule(args.env, args.rule_id):
            print(f"no alert rule {args.rule_id} in environment {args.env}")
            return 1
        print(f"deleted {args.rule_id}")
        return 0
    deliveries = store.list_alert_deliveries(args.env, args.rule_id, limit=args.limit)
    lines: list[str] = []
    for d in deliveries:
        what = f"summary of {d.summary_of}" if d.summary_of else d.event
        lines.append(f"{d.id}  {d.status:9} {what:20} created {_when(d.created_at)} "
                     f"attempts {d.attempts}")
        lines.extend(f"    #{a.n} {_when(a.at)} {a.status_code or '-'} {a.error or 'ok'}"
                     for a in d.attempt_log)
    _print(args, [vars(d) for d in deliveries], lines or ["no deliveries"])
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.errors_cmd == "list":
        groups = store.list_error_groups(args.env, args.status, args.limit)
        _print(args, [vars(g) for g in groups], [
            f"{g.fingerprint}  {g.status:8} {g.count:6}x  last {_when(g.last_seen)}  "
            f"{g.exc_type}: {g.message[:80]}" for g in groups
        ] or ["no errors"])
        return 0
    if args.errors_cmd == "show":
        group = store.error_group(args.env, args.fingerprint)
        if group is None:
            print(f"no error group {args.fingerprint}")
            return 1
        _print(args, vars(group), [
            f"{group.exc_type}: {group.message}",
            f"frame: {group.frame or '-'}   status: {group.status}   count: {group.count}",
            f"first seen {_when(group.first_seen)}, last seen {_when(group.last_seen)}",
            "tasks: " + ", ".join(f"{t} ({n})" for t, n in group.tasks.items()),
            "versions: " + (", ".join(f"{v} ({n})" for v, n in group.versions.items()) or "-"),
            f"sample run: {group.sample_run_id}",
        ])
        return 0
    status = {"resolve": "resolved", "ignore": "ignored", "reopen": "open"}[args.errors_cmd]
    if not store.set_error_group_status(args.env, args.fingerprint, status):
        print(f"no error group {args.fingerprint}")
        return 1
    print(f"{args.fingerprint}: {status}")
    return 0
