"""The dashboard's pages (GET). Actions (POST) are in ``_actions.py``; the JSON the pages
poll for live updates in ``_live.py``. ``routes()`` lists all of them."""

from __future__ import annotations

from typing import Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from ... import explain
from ..._retention import effective_policy
from ...runs import Run, RunStatus
from ...store.base import TaskDef, Waitpoint
from ._filters import PAGE_SIZE, RANGES, STATUSES, RunFilter
from ._fmt import pretty
from ._schema import example_payload
from ._timeline import all_events, attempts, build
from ._web import Ctx, Dashboard

WEEK = 7 * 86400.0


# -- runs -----------------------------------------------------------------------------------


def run_filter(ctx: Ctx) -> RunFilter:
    return RunFilter.read(ctx.arg, ctx.args)


def _matches(run: Run, kw: dict[str, Any]) -> bool:
    """Whether a run passes the list's other filters (see Store.list_runs)."""
    return (
        (not kw["status"] or str(run.status) in kw["status"])
        and (not kw["task_id"] or run.task_id == kw["task_id"])
        and (not kw["tag"] or kw["tag"] in run.tags)
        and (not kw["queue"] or run.queue == kw["queue"])
        and (kw["created_from"] is None or run.created_at >= kw["created_from"])
        and (kw["created_to"] is None or run.created_at <= kw["created_to"])
    )


def runs_page_data(ctx: Ctx, f: RunFilter) -> dict[str, Any]:
    """One page of runs, newest first, by the id cursor: as fast on page 2,000 as on 1."""
    kw = f.store_kwargs(ctx.store.now())
    found = None
    if f.search.startswith("run_") and not f.before:
        # A run id: one primary-key read, where the id-or-idempotency-key search scans.
        found = ctx.store.get_run(ctx.env, f.search)
    if found is not None:
        runs = [found] if _matches(found, kw) else []
    else:
        runs = ctx.store.list_runs(ctx.env, **kw, limit=PAGE_SIZE + 1, before=f.before or None)
    page, more = runs[:PAGE_SIZE], len(runs) > PAGE_SIZE
    return {
        "runs": page,
        "filter": f,
        "older": f.query(cursor=False, before=page[-1].id) if more and page else None,
        "newest": f.query(cursor=False) if f.before else None,
        "now": ctx.store.now(),
    }


def runs_index(ctx: Ctx) -> Response:
    f = run_filter(ctx)
    data = runs_page_data(ctx, f)
    tasks = sorted({t.id for t in ctx.store.list_tasks(ctx.env)} | ({f.task} - {""}))
    queues = sorted(set(ctx.store.queue_names(ctx.env)) | ({f.queue} - {""}))
    return ctx.render(
        "runs.html", active="runs", statuses=STATUSES, ranges=list(RANGES), tasks=tasks,
        queues=queues, live_url="/dashboard-api/runs?" + f.query(), **data,
    )


def run_detail_data(ctx: Ctx, run: Run) -> dict[str, Any]:
    store = ctx.store
    now = store.now()
    journal = store.journal(run.id)
    events = all_events(store, run.id)
    children = store.child_runs(ctx.env, run.id, 100)
    parent = store.get_run(ctx.env, run.parent_id) if run.parent_id else None
    waiting_tokens = []
    if run.status == RunStatus.WAITING and isinstance(run.wait_reason, dict):
        for wp_id in run.wait_reason.get("waitpoints", [])[:10]:
            wp = store.get_waitpoint(ctx.env, wp_id)
            if wp is not None and wp.kind == "token" and wp.status == "pending":
                waiting_tokens.append(wp)
    return {
        "waiting_tokens": waiting_tokens,
        "run": run,
        "now": now,
        "why": explain.why(store, run),
        "journal": journal,
        "attempts": attempts(run, journal, events, now),
        "logs": [e for e in events if e.kind == "log"][-500:],
        "children": children,
        "parent": parent,
        "timeline": build(store, run, journal, events, children, now),
        "duration": run.duration if run.is_final else (
            (now - run.started_at) if run.started_at is not None else None),
    }


def run_page(ctx: Ctx, replay_text: str | None = None, replay_error: str | None = None,
             status: int = 200) -> Response:
    run_id = ctx.path_param("run_id")
    run = ctx.store.get_run(ctx.env, run_id)
    if run is None:
        return ctx.render("error.html", status=404, title="Run not found",
                          message=f"No run {run_id!r} in environment {ctx.env!r}.",
                          active="runs")
    data = run_detail_data(ctx, run)
    return ctx.render(
        "run.html", status=status, active="runs",
        replay_text=replay_text if replay_text is not None else pretty(run.payload),
        replay_error=replay_error,
        live_url=None if run.is_final else f"/dashboard-api/runs/{run.id}", **data,
    )


# -- tasks ----------------------------------------------------------------------------------


def tasks_page(ctx: Ctx) -> Response:
    store = ctx.store
    defs = {t.id: t for t in store.list_tasks(ctx.env)}
    counts = store.count_runs(ctx.env)
    stats = store.duration_percentiles(ctx.env, store.now() - WEEK)
    ids = sorted(set(defs) | set(counts))
    rows = []
    for task_id in ids:
        td = defs.get(task_id)
        c = counts.get(task_id, {})
        rows.append({
            "id": task_id,
            "def": td,
            "retry": (td.spec.get("retry") or {}) if td else {},
            "counts": [(s, c[s]) for s in STATUSES if c.get(s)],
            "total": sum(c.values()),
            "stats": stats.get(task_id),
        })
    retention = effective_policy(store, ctx.env)
    return ctx.render("tasks.html", active="tasks", rows=rows, retention=retention)


# -- queues ---------------------------------------------------------------------------------


def queues_data(ctx: Ctx) -> dict[str, Any]:
    store = ctx.store
    queues = []
    for q in store.list_queues(ctx.env):
        queued_keys = store.queued_by_key(ctx.env, q["name"])
        executing_keys = q["keys"]
        names = sorted(set(queued_keys) | set(executing_keys),
                       key=lambda k: (-(executing_keys.get(k, 0) + queued_keys.get(k, 0)), k))
        keys = [(k, executing_keys.get(k, 0), queued_keys.get(k, 0)) for k in names]
        queues.append({**q, "key_rows": keys if any(k for k, _, _ in keys) else []})
    return {"queues": queues}


def queues_page(ctx: Ctx) -> Response:
    return ctx.render("queues.html", active="queues", live_url="/dashboard-api/queues",
                      **queues_data(ctx))


# -- waitpoints -----------------------------------------------------------------------------

TOKEN_VIEWS = {"pending": "pending", "completed": "completed", "timed_out": "timed_out",
               "all": None}


def waitpoints_data(ctx: Ctx, show: str) -> dict[str, Any]:
    status = TOKEN_VIEWS.get(show, "pending")
    tokens: list[Waitpoint] = [
        w for w in ctx.store.list_waitpoints(ctx.env, status=status, limit=200)
        if w.kind == "token"
    ]
    ids = {r for w in tokens for r in w.waiting_runs} | {w.run_id for w in tokens if w.run_id}
    runs = {r.id: r for r in ctx.store.get_runs(ctx.env, sorted(ids))} if ids else {}
    return {"tokens": tokens, "runs": runs, "show": show, "now": ctx.store.now()}


def waitpoints_page(ctx: Ctx) -> Response:
    show = ctx.arg("show", "pending")
    show = show if show in TOKEN_VIEWS else "pending"
    return ctx.render("waitpoints.html", active="waitpoints",
                      live_url=f"/dashboard-api/waitpoints?show={show}",
                      views=list(TOKEN_VIEWS), **waitpoints_data(ctx, show))


# -- workers --------------------------------------------------------------------------------


def workers_data(ctx: Ctx) -> dict[str, Any]:
    workers = ctx.store.list_workers(ctx.env)
    executing = ctx.store.list_runs(ctx.env, status=["EXECUTING"], limit=1000)
    by_worker: dict[str, list[Run]] = {}
    for r in executing:
        by_worker.setdefault(r.worker_id or "", []).append(r)
    alive = [w for w in workers if w["status"] == "alive"]
    gone = [w for w in workers if w["status"] != "alive"]
    return {"alive": alive, "gone": gone, "by_worker": by_worker, "now": ctx.store.now()}


def workers_page(ctx: Ctx) -> Response:
    return ctx.render("workers.html", active="workers", live_url="/dashboard-api/workers",
                      **workers_data(ctx))


# -- test -----------------------------------------------------------------------------------


def test_page(ctx: Ctx, *, task_id: str | None = None, payload_text: str | None = None,
              errors: dict[str, list[str]] | None = None, values: dict[str, str] | None = None,
              status: int = 200) -> Response:
    tasks = ctx.store.list_tasks(ctx.env)
    chosen = task_id if task_id is not None else ctx.arg("task")
    if not chosen and tasks:
        chosen = tasks[0].id
    td: TaskDef | None = next((t for t in tasks if t.id == chosen), None)
    recent = ctx.store.list_runs(ctx.env, task_id=chosen, limit=5) if chosen else []
    if payload_text is None:
        payload_text = example_payload(td.payload_schema if td else {})
    return ctx.render(
        "test.html", status=status, active="test", tasks=tasks, chosen=chosen, task=td,
        payload_text=payload_text, errors=errors or {}, values=values or {}, recent=recent,
    )


# -- schedules ------------------------------------------------------------------------------


def schedules_page(ctx: Ctx) -> Response:
    from ... import cron

    schedules, total = ctx.store.list_schedules(ctx.env, limit=500)
    rows = [(s, cron.describe(s.cron)) for s in schedules]
    return ctx.render("schedules.html", active="schedules", rows=rows, total=total)


# -- login ----------------------------------------------------------------------------------


def safe_next(target: str) -> str:
    """Only a local path: never ``//host`` or a scheme, which would leave the site."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/runs"
    return target


def login_page(ctx: Ctx, error: str | None = None, status: int = 200) -> Response:
    if not ctx.app.require_login or ctx.session.auth:
        return RedirectResponse(safe_next(ctx.arg("next", "/runs")), status_code=303)
    return ctx.render("login.html", status=status, error=error,
                      next=safe_next(ctx.arg("next", "/runs") or ctx.field("next", "/runs")),
                      has_password=bool(ctx.app.password))


def index(ctx: Ctx) -> Response:
    return RedirectResponse("/runs", status_code=307)


def routes(dash: Dashboard) -> list[BaseRoute]:
    # they call back into the pages above
    from . import (
        _actions,
        _alerts_view,
        _live,
        _usage_views,
        _versions_view,
        _webhooks_view,
        events_view,
    )

    r = dash.route
    return [
        r("/", index),
        r("/runs", runs_index),
        r("/runs/bulk", _actions.bulk, methods=("POST",)),
        r("/runs/{run_id}", run_page),
        r("/runs/{run_id}/cancel", _actions.cancel, methods=("POST",)),
        r("/runs/{run_id}/replay", _actions.replay, methods=("POST",)),
        r("/tasks", tasks_page),
        r("/queues", queues_page),
        r("/queues/pause", _actions.queue_pause, methods=("POST",)),
        r("/queues/limit", _actions.queue_limit, methods=("POST",)),
        r("/waitpoints", waitpoints_page),
        r("/waitpoints/complete", _actions.complete_token, methods=("POST",)),
        r("/workers", workers_page),
        r("/test", test_page),
        r("/test", _actions.test_trigger, methods=("POST",)),
        r("/schedules", schedules_page),
        r("/events", events_view.events_page),
        r("/webhooks", _webhooks_view.webhooks_page),
        r("/login", login_page, public=True),
        r("/login", _actions.login, methods=("POST",), public=True),
        r("/logout", _actions.logout, methods=("POST",), public=True),
        r("/env", _actions.select_env, methods=("POST",)),
        r("/dashboard-api/runs", _live.runs, api=True),
        r("/dashboard-api/runs/{run_id}", _live.run, api=True),
        r("/dashboard-api/queues", _live.queues, api=True),
        r("/dashboard-api/waitpoints", _live.waitpoints, api=True),
        r("/dashboard-api/workers", _live.workers, api=True),
        *_alerts_view.routes(dash),
        *_usage_views.routes_for(r),
        *_versions_view.routes(dash),
    ]

