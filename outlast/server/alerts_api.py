"""Alerts and the errors page over HTTP: /api/v1/alerts (rules, their deliveries with
attempts) and /api/v1/errors (failures grouped by fingerprint; resolve, ignore, reopen).

A rule's signing secret is in the answer to its creation and nowhere else.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run
# time, and ``Env`` is local to ``build_alerts_router``.
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from .. import _alerts
from ..store.base import ApiStore


class CreateAlertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on: str = Field(..., max_length=64,
                    description="run.failed | run.timed_out | queue.backlog | no_worker"
                                " | usage.spike")
    webhook: str = Field(..., max_length=2048, description="the URL to POST to")
    format: Literal["json", "slack"] = "json"
    task: str | None = Field(None, max_length=128, description="only this task's runs")
    queue: str | None = Field(None, max_length=128, description="only this queue")
    olderThan: str | float | None = Field(
        None, description="queue.backlog / no_worker: seconds, or 90s, 5m, 2h"
    )


def _rule_json(rule: Any) -> dict[str, Any]:
    return {
        "id": rule.id, "on": rule.event, "task": rule.task_id, "queue": rule.queue,
        "olderThan": rule.older_than, "webhook": rule.webhook_url, "format": rule.format,
        "createdAt": rule.created_at,
    }


def build_alerts_router(store: ApiStore, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["alerts"])
    Env = Annotated[str, Depends(env_dependency)]

    @router.get("/api/v1/alerts", summary="List alert rules (never their secrets)")
    def list_alerts(env: Env) -> dict[str, Any]:
        return {"data": [_rule_json(r) for r in store.list_alert_rules(env)]}

    @router.post("/api/v1/alerts", summary="Create an alert rule; the answer holds its "
                 "signing secret, shown this once")
    def create_alert(body: CreateAlertBody, env: Env) -> dict[str, Any]:
        older = body.olderThan
        if isinstance(older, str):
            older = _alerts.parse_duration(older, "olderThan")
        rule, secret = _alerts.create_rule(
            store, store.clock, env, event=body.on, webhook_url=body.webhook,
            format=body.format, task_id=body.task, queue=body.queue, older_than=older,
        )
        return {**_rule_json(rule), "secret": secret}

    @router.delete("/api/v1/alerts/{rule_id}", summary="Delete an alert rule")
    def delete_alert(rule_id: str, env: Env) -> dict[str, Any]:
        if not store.delete_alert_rule(env, rule_id):
            raise HTTPException(404, f"no alert rule {rule_id}")
        return {"id": rule_id, "deleted": True}

    @router.get("/api/v1/alerts/deliveries", summary="Recent deliveries of every rule")
    @router.get("/api/v1/alerts/{rule_id}/deliveries",
                summary="Recent deliveries of one rule, each with its attempts")
    def deliveries(
        env: Env, rule_id: str | None = None, limit: int = Query(50, ge=1, le=500)
    ) -> dict[str, Any]:
        return {"data": [asdict(d) for d in store.list_alert_deliveries(env, rule_id, limit)]}

    @router.get("/api/v1/errors", summary="Failures grouped by fingerprint, most recent first")
    def list_errors(
        env: Env,
        status: Literal["open", "resolved", "ignored"] | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        return {"data": [asdict(g) for g in store.list_error_groups(env, status, limit)]}

    @router.get("/api/v1/errors/{fingerprint}",
                summary="One error group: tasks, versions, failures per hour, a sample run")
    def get_error(fingerprint: str, env: Env) -> dict[str, Any]:
        group = store.error_group(env, fingerprint)
        if group is None:
            raise HTTPException(404, f"no error group {fingerprint}")
        return asdict(group)

    @router.post("/api/v1/errors/{fingerprint}/{action}",
                 summary="Resolve, ignore or reopen an error group")
    def set_error_status(
        fingerprint: str, action: Literal["resolve", "ignore", "reopen"], env: Env
    ) -> dict[str, Any]:
        status = {"resolve": "resolved", "ignore": "ignored", "reopen": "open"}[action]
        if not store.set_error_group_status(env, fingerprint, status):
            raise HTTPException(404, f"no error group {fingerprint}")
        return {"fingerprint": fingerprint, "status": status}

    return router
