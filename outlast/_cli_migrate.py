"""``outlast migrate``: create or upgrade the schema, expand then contract.

``outlast migrate`` applies the pending expand migrations, and a contract one only if no
live process runs an older release (it stops before one that waits, and says who it waits
for). ``--contract`` makes a waiting contract step an error (exit 3). ``--check`` changes
nothing: it lists the processes and the release each runs, and what migrating would do.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Any

EXIT_PENDING = 1  # --check: migrations wait to be applied
EXIT_BLOCKED = 3  # a contract step waits for processes of an older release


def add_commands(sub: Any) -> None:
    from ._cli_common import _common

    p = sub.add_parser("migrate", help="create or upgrade the database schema (expand, "
                       "then contract once no older process is left)")
    _common(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="change nothing: list processes "
                      "by release and the migrations pending; exit 1 if any are")
    mode.add_argument("--contract", action="store_true", help="fail (exit 3) rather than "
                      "stop before a contract migration that live older processes hold back")
    p.add_argument("--json", action="store_true", help="with --check: as JSON")
    p.set_defaults(fn=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import open_store
    from .store._schema_base import CONTRACT, ContractBlocked

    store: Any = open_store(args.database_url)
    try:
        if args.check:
            return _check(store, args.json)
        try:
            version = store.migrate(contract=args.contract)
        except ContractBlocked as exc:
            print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
            return EXIT_BLOCKED
        status = store.schema_status()
        waiting = [m for m in status.pending if m.kind == CONTRACT]
        print(f"schema is at version {version} ({store.safe_url})")
        for m in waiting:
            who = status.blockers(m)
            print(f"contract migration {m.number:04d}_{m.name} waits for {len(who)} "
                  "processes of an older release; run `outlast migrate --contract` once "
                  "they are upgraded (`outlast migrate --check` lists them)")
        return 0
    finally:
        store.close()


def _check(store: Any, as_json: bool) -> int:
    from .store._schema_base import CONTRACT

    status = store.schema_status()
    if as_json:
        print(json.dumps({"database": store.safe_url, **status.to_dict()}, indent=2))
        return EXIT_PENDING if status.pending or not status.exists else 0
    if not status.exists:
        print(f"no outlast schema in {store.safe_url}: run `outlast migrate`")
        return EXIT_PENDING
    print(f"database  {store.safe_url}")
    print(f"schema    version {status.version}; this outlast: version {status.code_version}"
          + ("" if status.runnable else " (this release cannot run on it)"))
    for name, kind in status.unknown.items():
        print(f"  applied by a newer release: {name} ({kind})")
    if status.pending:
        print("pending")
        for m in status.pending:
            line = f"  {m.number:04d}_{m.name:32} {m.kind}"
            if m.kind == CONTRACT:
                who = status.blockers(m)
                line += (f"  waits for {len(who)} older processes" if who
                         else "  ready (no older process is live)")
            print(line)
    else:
        print("pending   none")
    print(f"processes {len(status.processes)} live")
    releases: dict[tuple[str, Any], int] = {}
    for p in status.processes:
        releases[(p.release, p.schema_version)] = releases.get(
            (p.release, p.schema_version), 0) + 1
    for (rel, schema), n in sorted(releases.items(), key=str):
        print(f"  release {rel} (schema {schema if schema is not None else '?'}): {n}")
    for p in status.processes:
        started = _dt.datetime.fromtimestamp(p.started_at, _dt.UTC).strftime("%Y-%m-%d %H:%M")
        schema = p.schema_version if p.schema_version is not None else "?"
        print(f"  {p.kind:7} {p.id:34} {p.host}:{p.pid:<7} env {p.env:8} release "
              f"{p.release} schema {schema}  since {started}")
    return EXIT_PENDING if status.pending else 0
