"""outlast in a Flask app: ``Outlast(app)`` puts a client on the app and adds the
``flask outlast`` commands.

::

    from outlast.contrib.flask import Outlast

    app = Flask(__name__)
    app.config["OUTLAST_DATABASE_URL"] = "postgresql://…"     # or the environment's
    outlast = Outlast(app)

    @app.post("/signup")
    def create():
        handle = app.outlast.trigger(signup, request.get_json())   # or outlast.client
        return {"run_id": handle.id}

``flask outlast worker`` runs a worker serving the tasks the app imports (any
``outlast worker`` flag after it); ``flask outlast migrate`` brings the schema up to date.
Config keys: OUTLAST_DATABASE_URL, OUTLAST_API_URL, OUTLAST_SECRET_KEY, OUTLAST_ENV
(each defaults to the environment variable of that name).
"""

from __future__ import annotations

import os
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from ..client import Client
from ._commands import run_command

_KEYS = ("OUTLAST_DATABASE_URL", "OUTLAST_API_URL", "OUTLAST_SECRET_KEY", "OUTLAST_ENV")

cli = AppGroup("outlast", help="outlast: durable background jobs.")


class Outlast:
    """The Flask extension. ``Outlast(app)``, or ``Outlast()`` then ``init_app(app)``."""

    def __init__(self, app: Flask | None = None) -> None:
        self._app: Flask | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        for key in _KEYS:
            app.config.setdefault(key, os.environ.get(key) or None)
        app.extensions["outlast"] = self
        app.cli.add_command(cli)
        self._app = app
        # The client opens on first use: `flask outlast migrate` must run before a
        # client that checks the schema can exist.
        setattr(app, "outlast", _LazyClient(app))  # noqa: B010 - Flask has no such slot

    @property
    def client(self) -> Client:
        app = self._app or current_app
        return client_of(app)


def client_of(app: Flask) -> Client:
    """The app's client (made on first use, then kept in ``app.extensions``)."""
    client: Client | None = app.extensions.get("outlast_client")
    if client is None:
        cfg = app.config
        client = Client(cfg.get("OUTLAST_DATABASE_URL"), api_url=cfg.get("OUTLAST_API_URL"),
                        secret_key=cfg.get("OUTLAST_SECRET_KEY"), env=cfg.get("OUTLAST_ENV"))
        app.extensions["outlast_client"] = client
    return client


class _LazyClient:
    """``app.outlast``: the app's Client, opened on first attribute access."""

    def __init__(self, app: Flask) -> None:
        self._flask_app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(client_of(self._flask_app), name)


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@cli.command("worker", context_settings=_PASS_THROUGH,
             help="Run a worker for the app's tasks (takes `outlast worker`'s flags).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker_command(args: tuple[str, ...]) -> None:
    cfg = current_app.config
    raise SystemExit(run_command("worker", cfg.get("OUTLAST_DATABASE_URL"),
                                 cfg.get("OUTLAST_ENV"), args))


@cli.command("migrate", help="Create or upgrade outlast's tables.")
def migrate_command() -> None:
    cfg = current_app.config
    raise SystemExit(run_command("migrate", cfg.get("OUTLAST_DATABASE_URL"), None))
