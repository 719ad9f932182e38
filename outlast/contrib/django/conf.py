"""``settings.OUTLAST``: how a Django project reaches outlast.

::

    OUTLAST = {
        "DATABASE_URL": "postgresql://…/app",  # default: OUTLAST_DATABASE_URL, else the
                                               # PostgreSQL database of DATABASE below
        "API_URL": None, "SECRET_KEY": None,    # or trigger over HTTP
        "ENV": "prod",                          # default: OUTLAST_ENV, else "dev"
        "DATABASE": "default",                  # the Django alias for on_commit/transactions
        "TRIGGER": "on_commit",                 # or "in_transaction" (same PostgreSQL), "now"
        "AUTODISCOVER": True,                   # import tasks.py of every installed app
        "TASKS_MODULE": "tasks",
    }
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

from django.conf import settings as django_settings
from django.db import connections

from ..._errors import ConfigurationError

TRIGGER_MODES = ("on_commit", "in_transaction", "now")
DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": None,
    "API_URL": None,
    "SECRET_KEY": None,
    "ENV": None,
    "DATABASE": "default",
    "TRIGGER": "on_commit",
    "AUTODISCOVER": True,
    "TASKS_MODULE": "tasks",
}


def options() -> dict[str, Any]:
    given = getattr(django_settings, "OUTLAST", None) or {}
    if not isinstance(given, dict):
        raise ConfigurationError("settings.OUTLAST must be a dict", field="OUTLAST")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"settings.OUTLAST has unknown keys {unknown}; known: {sorted(DEFAULTS)}",
            field=f"OUTLAST.{unknown[0]}",
        )
    merged = {**DEFAULTS, **given}
    if merged["TRIGGER"] not in TRIGGER_MODES:
        raise ConfigurationError(
            f"OUTLAST['TRIGGER'] must be one of {', '.join(TRIGGER_MODES)}",
            field="OUTLAST.TRIGGER",
        )
    return merged


def database_url(opts: dict[str, Any]) -> str | None:
    """OUTLAST['DATABASE_URL'], else OUTLAST_DATABASE_URL, else the Django database's
    own URL when it is PostgreSQL (outlast's tables then live beside the app's, which is
    what triggering in the app's transaction needs); None means outlast's default."""
    url = opts["DATABASE_URL"] or os.environ.get("OUTLAST_DATABASE_URL")
    if url:
        return str(url)
    db = connections.settings[opts["DATABASE"]]
    if "postgresql" not in db.get("ENGINE", ""):
        return None
    user = urllib.parse.quote(db.get("USER") or "", safe="")
    password = urllib.parse.quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{auth}{host}{port}/{db['NAME']}"
