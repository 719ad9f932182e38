"""``outlast retention show|set|unset`` and ``outlast prune [--dry-run]``: how long
finished runs are kept, per environment and per task, and pruning them now (the
scheduler in every server and worker also prunes continuously, in small batches)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._retention import BATCH, DEFAULT_DAYS, DEV_DAYS

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    from ._cli_common import _common

    p = sub.add_parser("retention", help="how long finished runs are kept (per environment, "
                       "per task)")
    rs = p.add_subparsers(dest="retention_cmd", required=True)
    q = rs.add_parser("show", help="the policy of the environment and its task overrides")
    _common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_retention)
    q = rs.add_parser("set", help="keep finished runs N days (the environment, or --task)")
    _common(q)
    days = q.add_mutually_exclusive_group(required=True)
    days.add_argument("--days", type=float, help="days after a run finished")
    days.add_argument("--forever", action="store_true", help="never prune")
    q.add_argument("--task", help="a task id: an override for this task only")
    q.set_defaults(fn=cmd_retention)
    q = rs.add_parser("unset", help="remove a policy (the default applies again)")
    _common(q)
    q.add_argument("--task", help="a task id: remove this task's override")
    q.set_defaults(fn=cmd_retention)

    p = sub.add_parser("prune", help="delete finished runs past their retention now "
                       "(--dry-run: count them)")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="only count what would go")
    p.add_argument("--all-envs", action="store_true", help="every environment, not --env")
    p.add_argument("--batch-size", type=int, default=BATCH,
                   help=f"runs per transaction (default {BATCH})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_prune)


def _days(days: float | None) -> str:
    return "for ever" if days is None else f"{days:g} days"


def cmd_retention(args: argparse.Namespace) -> int:
    from ._cli_common import _setup, _store
    from ._errors import ValidationError
    from ._retention import check_days, effective_policy

    _setup(args)
    store = _store(args)
    try:
        if args.retention_cmd == "set":
            try:
                days = None if args.forever else check_days(args.days)
            except ValidationError as exc:
                print(f"error: --days: {exc.message}", file=sys.stderr)
                return 2
            store.set_retention_policy(args.env, args.task, days)
            what = f"task {args.task!r}" if args.task else f"environment {args.env!r}"
            print(f"{what}: finished runs kept {_days(days)}")
            return 0
        if args.retention_cmd == "unset":
            if not store.delete_retention_policy(args.env, args.task):
                print("no such policy", file=sys.stderr)
                return 1
            print("removed; the default applies")
            return 0
        policy = effective_policy(store, args.env)
        if args.json:
            print(json.dumps(policy.to_dict()))
            return 0
        source = (f" (the default; `outlast dev` sets {DEV_DAYS:g})" if policy.is_default
                  else "")
        print(f"environment {args.env!r}: finished runs kept {_days(policy.days)}{source}")
        for task, days in sorted(policy.tasks.items()):
            print(f"  task {task}: {_days(days)}")
        return 0
    finally:
        store.close()


def cmd_prune(args: argparse.Namespace) -> int:
    from ._cli_common import _setup, _store
    from ._retention import prune

    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    _setup(args)
    store = _store(args)
    try:
        report = prune(store, default_days=DEFAULT_DAYS, dry_run=args.dry_run,
                       env=None if args.all_envs else args.env, batch=args.batch_size)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **report.to_dict()}))
        return 0
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{verb} {report.runs} finished runs")
    for env, per in sorted(report.counts.items()):
        for label, n in sorted(per.items()):
            scope = "other tasks" if label == "*" else f"task {label}"
            print(f"  {env}: {scope}: {n}")
    return 0
