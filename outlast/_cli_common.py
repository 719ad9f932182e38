"""What every ``outlast`` command shares: flags with environment twins, loading task code,
opening the store or a client, and printing (text or ``--json``).

A command group lives in its own module ``outlast/_cli_<topic>.py`` exposing
``add_commands(sub)``; ``outlast/cli.py`` registers each with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import importlib.util
import json
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._errors import OutlastError

# -- flags with environment twins -------------------------------------------------------------


def _flag(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    help: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    action: str | None = None,
) -> None:
    env = "OUTLAST_" + name.lstrip("-").replace("-", "_").upper()
    raw = os.environ.get(env)
    if action == "store_true":
        value = raw.lower() in ("1", "true", "yes", "on") if raw else bool(default)
        parser.add_argument(name, action="store_true", default=value, help=f"{help} [env: {env}]")
        return
    value = type(raw) if raw not in (None, "") else default
    shown = f" (default: {default})" if default is not None else ""
    parser.add_argument(name, type=type, default=value, help=f"{help}{shown} [env: {env}]")


def _common(p: argparse.ArgumentParser) -> None:
    _flag(p, "--database-url", help="sqlite:///path.db or postgresql://…",
          default="sqlite:///.outlast/outlast.db")
    _flag(p, "--env", help="environment name", default="dev")


def _app_flag(p: argparse.ArgumentParser) -> None:
    _flag(p, "--app", help="task modules or files, comma separated "
          "(or [tool.outlast] app in pyproject.toml)")


# -- loading task code ------------------------------------------------------------------------


def app_modules(app: str | None) -> list[str]:
    if app:
        return [m.strip() for m in app.split(",") if m.strip()]
    pyproject = Path("pyproject.toml")
    if pyproject.exists():
        conf = tomllib.loads(pyproject.read_text()).get("tool", {}).get("outlast", {})
        value = conf.get("app", [])
        return [value] if isinstance(value, str) else list(value)
    return []


def load_app(app: str | None) -> list[str]:
    """Import the task modules; returns the files they came from (for reloads)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    files = []
    for name in app_modules(app):
        if name.endswith(".py") or os.sep in name:
            path = Path(name).resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise OutlastError(f"cannot load task file {name!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
        if getattr(module, "__file__", None):
            files.append(str(module.__file__))
    return files


# -- the store, a client, output --------------------------------------------------------------


def _setup(args: argparse.Namespace) -> None:
    os.environ["OUTLAST_DATABASE_URL"] = args.database_url
    os.environ["OUTLAST_ENV"] = args.env


# Stores a command opened, closed by ``cli.main`` when the command returns: a PostgreSQL
# pool left to the garbage collector is closed from whatever thread collects it, which
# may be one of the pool's own (it cannot join itself).
_opened: list[Any] = []


def close_opened() -> None:
    while _opened:
        with contextlib.suppress(Exception):  # closing twice is harmless; so is a failure
            _opened.pop().close()


def _store(args: argparse.Namespace, *, migrate: bool = False) -> Any:
    from .store import open_store

    store = open_store(args.database_url)
    _opened.append(store)
    if migrate:
        store.migrate()
    else:
        store.check_schema()
    return store


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    return Client(store=_store(args), env=args.env)


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, indent=2))
    else:
        print(text)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
