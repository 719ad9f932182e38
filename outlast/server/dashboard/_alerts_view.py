"""The dashboard's errors page (failures grouped by fingerprint: counts over time, tasks
and versions affected, a sample run; resolve, ignore, reopen) and alerts page (rules with
their recent deliveries and each delivery's attempts)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import BaseRoute

from ..._errors import ValidationError
from ...store._alerts_base import ErrorGroup
from ._web import Ctx, Dashboard

_ACTIONS = {"resolve": "resolved", "ignore": "ignored", "reopen": "open"}
_DAY = 86400.0


def _spark(group: ErrorGroup, now: float, hours: int = 24) -> list[int]:
    """Failures per hour over the last ``hours``, oldest first, for a bar sparkline."""
    bars = [0] * hours
    start = (now // 3600.0 - hours + 1) * 3600.0
    for at, n in group.histogram:
        i = int((at - start) // 3600.0)
        if 0 <= i < hours:
            bars[i] += n
    return bars


def errors_page(ctx: Ctx) -> Response:
    status = ctx.arg("status") or None
    if status not in (None, "open", "resolved", "ignored"):
        status = None
    groups = ctx.store.list_error_groups(ctx.env, status, 200)
    return ctx.render("errors.html", active="errors", groups=groups, shown=status or "")


def error_group_page(ctx: Ctx) -> Response:
    fingerprint = ctx.path_param("fingerprint")
    group = ctx.store.error_group(ctx.env, fingerprint)
    if group is None:
        return ctx.render("error.html", status=404, title="Error group not found",
                          message=f"No error group {fingerprint} in this environment.")
    now = ctx.store.now()
    bars = _spark(group, now)
    return ctx.render("error_group.html", active="errors", group=group, bars=bars,
                      peak=max(bars) or 1)


def set_status(ctx: Ctx) -> Response:
    fingerprint = ctx.field("fingerprint")
    status = _ACTIONS.get(ctx.field("action"))
    if status is None:
        raise ValidationError("action: resolve, ignore or reopen", field="action")
    if not ctx.store.set_error_group_status(ctx.env, fingerprint, status):
        return ctx.redirect("/errors", ("error", f"No error group {fingerprint}."))
    return ctx.redirect(f"/errors/{fingerprint}", ("ok", f"Error group {status}."))


def alerts_page(ctx: Ctx) -> Response:
    rules = ctx.store.list_alert_rules(ctx.env)
    deliveries = ctx.store.list_alert_deliveries(ctx.env, None, 100)
    by_rule = {r.id: [d for d in deliveries if d.rule_id == r.id] for r in rules}
    return ctx.render("alerts.html", active="alerts", rules=rules, by_rule=by_rule)


def routes(dash: Dashboard) -> list[BaseRoute]:
    r = dash.route
    return [
        r("/errors", errors_page),
        r("/errors/status", set_status, methods=("POST",)),
        r("/errors/{fingerprint}", error_group_page),
        r("/alerts", alerts_page),
    ]
