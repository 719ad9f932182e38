"""What the pages poll for live updates: ``{"fragments": {element id: html}, "done": bool}``.

The fragments are rendered by the same templates as the page, so a refreshed part looks
exactly like a freshly loaded one; the page's script swaps the parts that changed and
stops polling once ``done`` (a run that ended).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from . import views
from ._web import Ctx


def _answer(ctx: Ctx, parts: dict[str, str], context: dict[str, Any], done: bool = False
            ) -> Response:
    fragments = {
        element: ctx.render_text(template, **context) for element, template in parts.items()
    }
    return JSONResponse({"fragments": fragments, "done": done},
                        headers={"Cache-Control": "no-store"})


def runs(ctx: Ctx) -> Response:
    f = views.run_filter(ctx)
    data = views.runs_page_data(ctx, f)
    return _answer(ctx, {"run-rows": "runs/_rows.html", "run-pager": "runs/_pager.html"}, data)


def run(ctx: Ctx) -> Response:
    run_id = ctx.path_param("run_id")
    found = ctx.store.get_run(ctx.env, run_id)
    if found is None:
        return JSONResponse({"error": f"no run {run_id!r}"}, status_code=404)
    data = views.run_detail_data(ctx, found)
    parts = {
        "run-head": "run/_head.html",
        "run-timeline": "run/_timeline.html",
        "run-details": "run/_details.html",
        "run-logs": "run/_logs.html",
    }
    return _answer(ctx, parts, data, done=found.is_final)


def queues(ctx: Ctx) -> Response:
    return _answer(ctx, {"queues-table": "queues/_table.html"}, views.queues_data(ctx))


def waitpoints(ctx: Ctx) -> Response:
    show = ctx.arg("show", "pending")
    show = show if show in views.TOKEN_VIEWS else "pending"
    return _answer(ctx, {"tokens-list": "waitpoints/_list.html"},
                   views.waitpoints_data(ctx, show))


def workers(ctx: Ctx) -> Response:
    return _answer(ctx, {"workers-list": "workers/_list.html"}, views.workers_data(ctx))
