"""The dashboard: server-rendered pages at ``/`` beside the API, no front-end build.

Runs (filters, search, bulk actions, live), a run's detail and timeline, tasks, queues,
waitpoint tokens, workers, versions, a test trigger form and schedules, per environment.

Login: with ``OUTLAST_DASHBOARD_PASSWORD`` set, every page asks for it (a signed
session cookie then carries the login). Without a password the dashboard is closed,
unless ``OUTLAST_DASHBOARD_OPEN=1`` opens it without login — which ``outlast dev`` sets
when it listens on a loopback address only.
"""

from __future__ import annotations

import os
from importlib import resources

from fastapi import FastAPI
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from ...store.base import DashboardStore
from ._web import Dashboard
from .views import routes

STATIC_PATH = "/dashboard-static"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def mount(
    app: FastAPI,
    store: DashboardStore,
    *,
    require_login: bool | None = None,
    password: str | None = None,
) -> Dashboard:
    """Serve the dashboard from ``app``.

    ``password`` defaults to OUTLAST_DASHBOARD_PASSWORD. ``require_login`` defaults to
    true unless no password is set and OUTLAST_DASHBOARD_OPEN is on; with a password it
    is always required."""
    if password is None:
        password = os.environ.get("OUTLAST_DASHBOARD_PASSWORD") or None
    if require_login is None:
        require_login = bool(password) or not _truthy(os.environ.get("OUTLAST_DASHBOARD_OPEN"))
    dash = Dashboard(store, require_login=require_login, password=password)
    static = resources.files("outlast.server.dashboard").joinpath("static")
    app.router.routes.extend(routes(dash))
    app.router.routes.append(
        Mount(STATIC_PATH, app=StaticFiles(directory=str(static)), name="dashboard-static")
    )
    app.state.dashboard = dash
    return dash


__all__ = ["Dashboard", "mount"]
