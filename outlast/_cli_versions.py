"""``outlast versions list|promote`` and ``outlast runs migrate`` (C11; issue 19)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(sub: Any) -> None:
    """The ``versions`` group."""
    from ._cli_common import _common

    p = sub.add_parser("versions", help="task code versions: list, promote (rollback)")
    vs = p.add_subparsers(dest="versions_cmd", required=True)
    q = vs.add_parser("list", help="versions, newest first: live workers, runs locked to "
                      "each, current, retirable")
    _common(q)
    q.add_argument("--json", action="store_true")
    q = vs.add_parser("promote", help="make VERSION current: new runs go to it")
    _common(q)
    q.add_argument("version")
    p.set_defaults(fn=cmd_versions)


def add_runs_migrate(rs: Any) -> None:
    """``runs migrate``, under the ``runs`` group."""
    from ._cli_common import _common

    q = rs.add_parser("migrate", help="re-lock unfinished runs of one version to another")
    _common(q)
    q.add_argument("--from", dest="from_version", required=True, help="the version now")
    q.add_argument("--to", dest="to_version", required=True, help="the version to lock to")
    q.add_argument("--task", help="only runs of this task")


def cmd_versions(args: argparse.Namespace) -> int:
    from ._cli_common import _client, _setup, _when

    _setup(args)
    client = _client(args)
    if args.versions_cmd == "promote":
        client.promote_version(args.version)
        print(f"version {args.version} is current in {args.env!r}: new runs go to it")
        return 0
    rows = client.list_versions()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'VERSION':28} {'STATE':18} {'WORKERS':>7} {'UNFINISHED':>10}  "
          f"{'REGISTERED':19}  LOCKED RUNS")
    for v in rows:
        state = ("current" + (" (pinned)" if v["pinned"] else "")) if v["current"] else ""
        if v["retirable"] and not v["current"]:
            state = "retirable"
        workers = str(v["live_workers"])
        if v["draining_workers"]:
            workers += f" ({v['draining_workers']}d)"
        locked = ", ".join(f"{k} {n}" for k, n in v["locked_runs"].items()) or "-"
        registered = _when(v["registered_at"]) if v["registered_at"] else "-"
        print(f"{v['version'][:28]:28} {state:18} {workers:>7} {v['unfinished_runs']:>10}  "
              f"{registered:19}  {locked}")
    return 0


def cmd_runs_migrate(args: argparse.Namespace) -> int:
    from ._cli_common import _client

    n = _client(args).migrate_runs(args.from_version, args.to_version, args.task)
    which = f" of task {args.task!r}" if args.task else ""
    print(f"{n} unfinished runs{which} locked to {args.from_version} now locked to "
          f"{args.to_version}")
    return 0
