"""``python manage.py outlast_worker [outlast worker flags]``: a worker serving the
project's tasks (each installed app's tasks.py), on the database of settings.OUTLAST."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ...._commands import run_command as run
from ...conf import database_url, options


class Command(BaseCommand):
    help = "Run an outlast worker for the project's tasks (takes `outlast worker`'s flags)."

    def run_from_argv(self, argv: list[str]) -> None:
        # Every flag after the command's name is `outlast worker`'s (see its --help):
        # handed over untouched rather than declared twice.
        sys.exit(self._run(argv[2:]))

    def handle(self, *args: Any, **kwargs: Any) -> None:
        code = self._run(list(args))
        if code:
            raise CommandError(f"outlast worker exited {code}", returncode=code)

    def _run(self, flags: list[str]) -> int:
        opts = options()
        return run("worker", database_url(opts), opts["ENV"], flags)
