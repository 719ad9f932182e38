"""``outlast doctor``: check what breaks production; each finding says what to do.

Exit 0 when nothing is a problem (warnings allowed), 1 when something is; ``--json``
prints the checks run and the findings as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def add_commands(sub: Any) -> None:
    from ._cli_common import _common

    p = sub.add_parser("doctor", help="check the database, schema, clocks, connections, "
                       "workers, stuck runs, paused queues, unserved tasks and exposure; "
                       "exit 1 on a problem")
    _common(p)
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p.set_defaults(fn=cmd_doctor)


def _open(url: str) -> tuple[Any, str | None]:
    """The store, or None and why the database cannot be reached."""
    from .store import open_store

    store: Any = None
    try:
        if url.startswith("sqlite:"):
            from .store.sqlite import _path_from_url

            path = _path_from_url(url)
            if not path.exists():  # opening would create it: doctor only reads
                return None, f"no SQLite database at {path} (`outlast migrate` creates it)"
        if url.startswith(("postgresql:", "postgres:")):
            import psycopg

            # Fail in seconds, not after the pool's 30 s of retries.
            psycopg.connect(url, connect_timeout=5).close()
        store = open_store(url)
        store.schema_status()  # a real round trip
        return store, None
    except Exception as exc:  # any failure to reach it is the finding
        log.debug("database unreachable", exc_info=True)
        if store is not None:
            store.close()
        lines = str(exc).strip().splitlines()
        return None, lines[0] if lines else type(exc).__name__


def cmd_doctor(args: argparse.Namespace) -> int:
    from ._doctor import PROBLEM, Context, Finding, run_checks

    store, error = _open(args.database_url)
    findings: list[Finding] = []
    if error is not None:
        findings.append(Finding("database", PROBLEM, f"cannot reach the database: {error}",
                                "check OUTLAST_DATABASE_URL (host, port, user, password, "
                                "database name) and that the database server runs and "
                                "accepts connections from this host"))
    try:
        ran, more = run_checks(Context(store=store, url=args.database_url, env=args.env))
    finally:
        if store is not None:
            store.close()
    findings += more
    ran = ["database", *ran]
    problems = sum(1 for f in findings if f.level == PROBLEM)
    if args.json:
        print(json.dumps({"ok": problems == 0, "env": args.env, "checks": ran,
                          "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"{f.level.upper():8} {f.check}: {f.message}\n         fix: {f.fix}")
        warnings = len(findings) - problems
        summary = (f"{len(ran)} checks, {problems} problems, {warnings} warnings"
                   if findings else f"all {len(ran)} checks passed")
        print(summary, file=sys.stderr if findings else sys.stdout)
    return 1 if problems else 0
