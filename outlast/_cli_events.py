"""``outlast events …``: publish an event, read the log, replay one on purpose."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from ._cli_common import _client, _common, _setup


def add_commands(sub: Any) -> None:
    p = sub.add_parser("events", help="publish events, list the event log, replay one")
    es = p.add_subparsers(dest="events_cmd", required=True)
    q = es.add_parser("publish", help="publish an event: one run per matching subscriber")
    _common(q)
    q.add_argument("name", help="e.g. user.signup")
    q.add_argument("--data", help="JSON data (the subscribers' payload)", default="null")
    q.add_argument("--id", help="event id: the same id again within 24 h does nothing new")
    q.add_argument("--json", action="store_true")
    q = es.add_parser("list", help="the event log, newest first, with the runs created")
    _common(q)
    q.add_argument("--name", help="only events of this name")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q = es.add_parser("replay", help="deliver a logged event again, on purpose")
    _common(q)
    q.add_argument("event_id")
    q.add_argument("--task", help="only to this subscriber")
    q.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_events)


def cmd_events(args: argparse.Namespace) -> int:
    _setup(args)
    client = _client(args)
    if args.events_cmd == "publish":
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            print(f"error: --data is not JSON: {exc}", file=sys.stderr)
            return 2
        r = client.publish(args.name, data, id=args.id)
        out = {"id": r.id, "duplicate": r.duplicate, "run_ids": r.run_ids}
        text = (f"event {r.id}: " + ("a duplicate, nothing new; " if r.duplicate else "")
                + f"{len(r.run_ids)} run(s) {' '.join(r.run_ids)}").rstrip()
        _print(args, out, text)
        return 0
    if args.events_cmd == "list":
        rows = client.list_events(args.name, args.limit)
        _print(args, rows, "\n".join(_describe(e) for e in rows) or "no events")
        return 0
    found = client.replay_event(args.event_id, args.task)
    _print(args, found, "\n".join(_delivery(d) for d in found) or "no subscriber matched")
    return 0


def _describe(e: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(e["ts"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"{when}  {e['id']}  {e['name']}  {json.dumps(e['data'])[:80]}"]
    lines += ["    " + _delivery(d) for d in e["deliveries"]]
    return "\n".join(lines)


def _delivery(d: dict[str, Any]) -> str:
    text = f"{d['task_id']}: {d['outcome']}"
    if d.get("run_id"):
        text += f" {d['run_id']}"
    if d.get("reason"):
        text += f" ({d['reason']})"
    return text


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)
