"""The dashboard's Versions page (C11): every task code version of the environment, its
live workers, the unfinished runs locked to it, current and retirable; promote one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.routing import BaseRoute

from ... import _versions
from ._web import Ctx

if TYPE_CHECKING:
    from ._web import Dashboard


def versions_page(ctx: Ctx) -> Response:
    rows = _versions.version_table(ctx.store, ctx.env)
    workers = ctx.store.version_workers(ctx.env)
    return ctx.render("versions.html", active="versions", rows=rows, workers=workers)


def promote(ctx: Ctx) -> Response:
    version = ctx.field("version").strip()
    _versions.promote(ctx.store, ctx.env, version)
    return ctx.redirect("/versions", ("ok", f"Version {version} is current: new runs go to it."))


def routes(dash: Dashboard) -> list[BaseRoute]:
    r = dash.route
    return [
        r("/versions", versions_page),
        r("/versions/promote", promote, methods=("POST",)),
    ]
