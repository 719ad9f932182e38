"""The ``outlast`` command. Every flag has an OUTLAST_* environment twin, shown in --help.

The commands live in modules by group, each exposing ``add_commands(sub)``:
``_cli_serving`` (dev, server, keys, worker, migrate), ``_cli_runs`` (trigger, runs,
tokens, queues), ``_cli_schedules``; what they share is in ``_cli_common``. A new group is
a new module ``outlast/_cli_<topic>.py`` registered below with one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import (
    _cli_alerts,
    _cli_events,
    _cli_retention,
    _cli_runs,
    _cli_schedules,
    _cli_serving,
    _cli_usage,
    _cli_versions,
    _cli_webhooks,
)
from ._cli_common import (
    _app_flag,
    _client,
    _common,
    _flag,
    _out,
    _setup,
    _store,
    _when,
    app_modules,
    close_opened,
    load_app,
)
from ._cli_format import quiet_broken_pipe
from ._cli_serving import _is_loopback
from ._errors import OutlastError

# Names other modules and tests import from here.
__all__ = [
    "_app_flag",
    "_client",
    "_common",
    "_flag",
    "_is_loopback",
    "_out",
    "_setup",
    "_store",
    "_when",
    "app_modules",
    "build_parser",
    "load_app",
    "main",
]

log = logging.getLogger("outlast.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outlast", description="Durable background jobs for Python."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    # In the order `outlast --help` lists them.
    _cli_serving.add_commands(sub)
    _cli_runs.add_commands(sub)
    _cli_schedules.add_commands(sub)
    _cli_alerts.add_commands(sub)
    _cli_events.add_commands(sub)
    _cli_usage.add_commands(sub)
    _cli_retention.add_commands(sub)
    _cli_versions.add_commands(sub)
    _cli_webhooks.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("OUTLAST_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        code: int = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try
    except BrokenPipeError:
        return quiet_broken_pipe()
    except OutlastError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except _environment_errors() as exc:
        # The database or the disk refused (full, read-only, unreachable): the operator's
        # to fix, so one line saying what, not a traceback through outlast's code.
        log.debug("command failed", exc_info=True)
        print(f"error [{_environment_code(exc)}]: {_first_line(exc)}", file=sys.stderr)
        return 1
    finally:
        close_opened()
    return code


def _environment_errors() -> tuple[type[Exception], ...]:
    import sqlite3

    errors: tuple[type[Exception], ...] = (sqlite3.OperationalError, sqlite3.DatabaseError,
                                           OSError)
    if "psycopg" in sys.modules:  # imported by a PostgreSQL store, if one was opened
        import psycopg

        errors += (psycopg.OperationalError,)
    return errors


def _environment_code(exc: Exception) -> str:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return "database_read_only"
    if "full" in text or "no space" in text or "disk i/o" in text:
        return "disk_full_or_failing"
    return "database_unavailable" if not isinstance(exc, OSError) else "os_error"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
