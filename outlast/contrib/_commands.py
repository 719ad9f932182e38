"""``worker`` and ``migrate`` for the framework CLIs (``flask outlast worker``,
``manage.py outlast_worker``): outlast's own commands, run with the database and
environment the app is configured with, the app's tasks already imported."""

from __future__ import annotations

from collections.abc import Sequence


def run_command(command: str, database_url: str | None, env: str | None,
                extra: Sequence[str] = ()) -> int:
    from ..cli import main

    argv = [command]
    if database_url:
        argv += ["--database-url", database_url]
    if env:
        argv += ["--env", env]
    return main([*argv, *extra])
