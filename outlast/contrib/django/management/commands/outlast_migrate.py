"""``python manage.py outlast_migrate``: create or upgrade outlast's tables on the
database of settings.OUTLAST."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ...._commands import run_command as run
from ...conf import database_url, options


class Command(BaseCommand):
    help = "Create or upgrade outlast's tables."

    def handle(self, *args: Any, **kwargs: Any) -> None:
        code = run("migrate", database_url(options()), None)
        if code:
            raise CommandError(f"outlast migrate exited {code}", returncode=code)
