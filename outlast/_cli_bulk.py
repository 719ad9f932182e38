"""``outlast runs bulk …``: cancel or replay every run matching a filter, in batches,
with a progress line per batch; ``--dry-run`` counts; ``resume`` continues an action a
crash (or Ctrl-C) interrupted from its last committed batch."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from . import _bulk
from ._cli_common import _client, _common, _setup

_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_runs_commands(runs: Any) -> None:
    """Add ``bulk`` to the ``runs`` group's subparsers."""
    p = runs.add_parser("bulk", help="cancel or replay every run matching a filter, in "
                        "batches, resumable")
    bs = p.add_subparsers(dest="bulk_cmd", required=True)
    for action in _bulk.ACTIONS:
        q = bs.add_parser(action, help=f"{action} every matching run"
                          + (" that has not ended" if action == "cancel" else ""))
        _common(q)
        q.add_argument("--task", help="task id")
        q.add_argument("--status", action="append", help="status (repeatable, or a,b)")
        q.add_argument("--tag")
        q.add_argument("--queue")
        q.add_argument("--since", help="created within, e.g. 30m, 6h, 7d")
        q.add_argument("--created-from", help="ISO 8601 (UTC if no offset) or epoch seconds")
        q.add_argument("--created-to", help="ISO 8601 (UTC if no offset) or epoch seconds")
        q.add_argument("--version", help="code version the runs locked to")
        q.add_argument("--all", action="store_true",
                       help="no filter: every run (refused without it, as a safety)")
        q.add_argument("--dry-run", action="store_true", help="only count the matching runs")
        q.add_argument("--batch-size", type=int, default=_bulk.DEFAULT_BATCH,
                       help=f"runs per transaction (default {_bulk.DEFAULT_BATCH})")
        q.add_argument("--json", action="store_true")
        q.set_defaults(fn=cmd_bulk)
    q = bs.add_parser("resume", help="continue a bulk action from its last batch")
    _common(q)
    q.add_argument("bulk_id")
    q.add_argument("--batch-size", type=int, default=_bulk.DEFAULT_BATCH)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_bulk)
    for name, text in (("show", "a bulk action's progress"), ("abort", "stop a bulk action")):
        q = bs.add_parser(name, help=text)
        _common(q)
        q.add_argument("bulk_id")
        q.add_argument("--json", action="store_true")
        q.set_defaults(fn=cmd_bulk)
    q = bs.add_parser("list", help="bulk actions, newest first")
    _common(q)
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_bulk)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    created_from: Any = args.created_from
    if args.since:
        m = _SINCE.fullmatch(args.since.strip())
        if m is None:
            print("error: --since is a number and a unit: 30m, 6h, 7d", file=sys.stderr)
            raise SystemExit(2)
        import time

        created_from = time.time() - float(m.group(1)) * _UNIT[m.group(2)]
    return {"task": args.task, "status": args.status, "tag": args.tag, "queue": args.queue,
            "created_from": created_from, "created_to": args.created_to,
            "version": args.version}


def cmd_bulk(args: argparse.Namespace) -> int:
    _setup(args)
    client = _client(args)
    if args.bulk_cmd in _bulk.ACTIONS:
        filters = _filters(args)
        if not args.all and not any(v for v in filters.values()):
            print(f"error: give a filter (--task, --status, --tag, --queue, --since, …) or "
                  f"--all to {args.bulk_cmd} every run", file=sys.stderr)
            return 2
        if args.dry_run:
            n = client.bulk_count(args.bulk_cmd, **filters)
            _print(args, {"action": args.bulk_cmd, "count": n},
                   f"{n:,} run{'s' if n != 1 else ''} would be {_done(args.bulk_cmd)} "
                   "(dry run: nothing changed)")
            return 0
        bulk = client.start_bulk(args.bulk_cmd, **filters)
        print(f"{_bulk.describe(bulk)}; resume with `outlast runs bulk resume {bulk.id}` "
              "if interrupted", file=sys.stderr if args.json else sys.stdout, flush=True)
        return _run(args, client, bulk.id)
    if args.bulk_cmd == "resume":
        return _run(args, client, args.bulk_id)
    if args.bulk_cmd == "list":
        rows = client.list_bulk(args.limit)
        if args.json:
            print(json.dumps([b.to_dict() for b in rows], indent=2))
            return 0
        for b in rows:
            print(_bulk.describe(b))
        return 0
    bulk = client.abort_bulk(args.bulk_id) if args.bulk_cmd == "abort" else client.get_bulk(
        args.bulk_id)
    _print(args, bulk.to_dict(), _bulk.describe(bulk) + (
        f"\n  last skipped: {bulk.last_error}" if bulk.last_error else ""))
    return 0


def _run(args: argparse.Namespace, client: Any, bulk_id: str) -> int:
    from ._cli_progress import progress as progress_bar  # a bar on stderr, on a terminal

    with progress_bar(None, f"{args.bulk_cmd} {bulk_id}") as bar:

        def progress(b: Any) -> None:
            bar.update(b.processed, b.total)
            if not args.json and not (bar.drawing and sys.stdout.isatty()):
                print(_bulk.describe(b), flush=True)

        bulk = client.resume_bulk(bulk_id, batch_size=args.batch_size, on_progress=progress)
    if args.json:
        print(json.dumps(bulk.to_dict(), indent=2))
    elif bulk.last_error:
        print(f"  last skipped: {bulk.last_error}")
    return 0 if bulk.status == "completed" else 1


def _done(action: str) -> str:
    return "canceled" if action == "cancel" else "replayed"


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)
