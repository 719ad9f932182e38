"""``outlast schedules``: cron schedules, and when an expression fires."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from typing import Any

from ._cli_common import _client, _common, _out, _setup, _when


def cmd_schedules(args: argparse.Namespace) -> int:
    """Cron schedules: list, show, create, update, enable, disable, delete; and `next`,
    which prints when an expression fires (no database needed)."""
    from . import _schedule_client

    if args.schedules_cmd == "next":
        return _next(args)
    _setup(args)
    client = _client(args)
    if args.schedules_cmd == "list":
        rows = client.list_schedules(task=args.task, external_id=args.external_id,
                                     per_page=args.limit)
        if args.json:
            print(json.dumps([_schedule_client.schedule_json(s) for s in rows], indent=2))
            return 0
        print(f"{'ID':32} {'TASK':20} {'TYPE':11} {'CRON':16} {'TIMEZONE':16} "
              f"{'EXTERNAL ID':14} {'NEXT RUN (UTC)':19} ACTIVE")
        for s in rows:
            print(f"{s.id:32} {s.task_id[:20]:20} {s.type:11} {s.cron[:16]:16} "
                  f"{s.timezone[:16]:16} {(s.external_id or '-')[:14]:14} "
                  f"{_when(s.next_run_at) if s.active else '-':19} "
                  f"{'yes' if s.active else 'no'}")
        return 0
    if args.schedules_cmd == "create":
        s = client.create_schedule(args.task, args.cron, timezone=args.tz,
                                   external_id=args.external_id,
                                   deduplication_key=args.deduplication_key)
    elif args.schedules_cmd == "update":
        changes: dict[str, Any] = {"task": args.task, "cron": args.cron, "timezone": args.tz}
        if args.external_id is not None:
            changes["external_id"] = args.external_id or None
        s = client.update_schedule(args.schedule_id, **changes)
    elif args.schedules_cmd == "enable":
        s = client.activate_schedule(args.schedule_id)
    elif args.schedules_cmd == "disable":
        s = client.deactivate_schedule(args.schedule_id)
    elif args.schedules_cmd == "delete":
        s = client.delete_schedule(args.schedule_id)
        _out(args, _schedule_client.schedule_json(s), f"deleted {s.id}")
        return 0
    else:  # show
        s = client.retrieve_schedule(args.schedule_id)
        if not args.json:
            _show(client, s)
            return 0
    _out(args, _schedule_client.schedule_json(s), "\n".join(f"{k:9} {v}" for k, v in
                                                      _schedule_lines(s)))
    return 0


def _next(args: argparse.Namespace) -> int:
    """When an expression fires (no database needed)."""
    from . import _schedule_client, cron

    c = cron.parse(args.expression)
    tz = cron.zone(args.tz)
    start = (_dt.datetime.fromisoformat(args.after.replace("Z", "+00:00")).timestamp()
             if args.after else time.time())
    slots = cron.upcoming(c, tz, start, max(1, min(args.n, 1000)))
    if args.json:
        print(json.dumps([_schedule_client.iso(t) for t in slots], indent=2))
        return 0
    print(f"{c.expression} in {tz.key}: {cron.describe(c.expression)}")
    for t in slots:
        local = _dt.datetime.fromtimestamp(t, tz)
        print(f"  {local:%Y-%m-%d %H:%M %a} {local.tzname() or ''} "
              f"({local:%z})  = {_when(t)} UTC")
    return 0


def _show(client: Any, s: Any) -> None:
    from . import cron

    print("\n".join(f"{k:9} {v}" for k, v in _schedule_lines(s)))
    tz = cron.zone(s.timezone)
    after = s.next_run_at - 1 if s.active and s.next_run_at else time.time()
    for t in cron.upcoming(cron.parse(s.cron), tz, after, 3) if s.active else []:
        print(f"  upcoming  {_dt.datetime.fromtimestamp(t, tz):%Y-%m-%d %H:%M %Z}")
    for f in client.store.schedule_slots(s.id, 10):
        print(f"  fired     {_when(f['slot'])} UTC -> {f['run_id']}")


def _schedule_lines(s: Any) -> list[tuple[str, str]]:
    from . import cron

    return [
        ("id", s.id),
        ("task", s.task_id),
        ("type", s.type),
        ("cron", f"{s.cron}  ({cron.describe(s.cron)})"),
        ("timezone", s.timezone),
        ("external", s.external_id or "-"),
        ("dedup key", s.deduplication_key or "-"),
        ("active", "yes" if s.active else "no"),
        ("next run", f"{_when(s.next_run_at)} UTC" if s.active else "-"),
        ("last run", f"{_when(s.last_run_at)} UTC  {s.last_run_id or ''}".rstrip()),
    ]


def add_commands(sub: Any) -> None:
    p = sub.add_parser("schedules", help="cron schedules: list, create, update, enable, "
                       "disable, delete; `next` prints when an expression fires")
    ss = p.add_subparsers(dest="schedules_cmd", required=True)
    q = ss.add_parser("list")
    _common(q)
    q.add_argument("--task")
    q.add_argument("--external-id")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("create", help="create, or update the one with --deduplication-key")
    _common(q)
    q.add_argument("--task", required=True, help="task id")
    q.add_argument("--cron", required=True, help="e.g. '0 9 * * MON' or @daily")
    q.add_argument("--tz", "--timezone", dest="tz", help="IANA time zone (default UTC)")
    q.add_argument("--external-id", help="e.g. the tenant's id; passed to every run")
    q.add_argument("--deduplication-key", "--dedup-key", dest="deduplication_key",
                   help="creating again with this key updates instead of duplicating")
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("update", help="change an imperative schedule")
    _common(q)
    q.add_argument("schedule_id")
    q.add_argument("--task")
    q.add_argument("--cron")
    q.add_argument("--tz", "--timezone", dest="tz")
    q.add_argument("--external-id", help="'' removes it")
    q.add_argument("--json", action="store_true")
    for name in ("show", "enable", "disable", "delete"):
        q = ss.add_parser(name)
        _common(q)
        q.add_argument("schedule_id")
        q.add_argument("--json", action="store_true")
    q = ss.add_parser("next", help="print the next times an expression fires")
    q.add_argument("expression", help="e.g. '*/5 * * * *'")
    q.add_argument("--tz", "--timezone", dest="tz", help="IANA time zone (default UTC)")
    q.add_argument("-n", type=int, default=5, help="how many (default 5)")
    q.add_argument("--after", help="ISO time to start from (default now)")
    q.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_schedules)
