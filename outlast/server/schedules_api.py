"""Schedules over HTTP: /api/v1/schedules, in the Trigger.dev shapes.

A schedule is ``{id, task, type, active, externalId, deduplicationKey, generator: {type:
"CRON", expression, description}, timezone, nextRun, environments}``. Creating with a
``deduplicationKey`` already in use updates that schedule (an upsert), so a client that
creates one schedule per tenant on every deploy never duplicates them. Declarative
schedules (from ``@task(cron=...)``) can be activated and deactivated here, not edited.
"""


import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from .. import _schedule_client, _schedule_crud
from .. import cron as _cron
from ..store.base import ScheduleStore


class CreateScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(..., min_length=1, max_length=128, description="the task id")
    cron: str = Field(..., max_length=256, description="5 fields, or @daily and friends")
    timezone: str | None = Field(None, max_length=64, description="IANA name; UTC if unset")
    externalId: str | None = Field(None, max_length=512, description="e.g. a tenant id")
    deduplicationKey: str | None = Field(
        None, max_length=512, description="creating with a key in use updates that schedule"
    )


class UpdateScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, min_length=1, max_length=128)
    cron: str | None = Field(None, max_length=256)
    timezone: str | None = Field(None, max_length=64)
    externalId: str | None = Field(None, max_length=512)


def build_schedules_router(store: ScheduleStore, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["schedules"])
    _schedule_routes(router, store, env_dependency)
    _activation_routes(router, store, env_dependency)
    return router


def _schedule_routes(router: APIRouter, store: ScheduleStore, env_dependency: Any) -> None:
    """List, create, retrieve, update and delete schedules."""
    Env = Annotated[str, Depends(env_dependency)]
    as_json = _schedule_client.schedule_json

    @router.get("/api/v1/schedules", summary="List schedules, oldest first")
    def list_schedules(
        env: Env,
        page: int = Query(1, ge=1, le=1_000_000),
        perPage: int = Query(25, ge=1, le=1000),
        task: str | None = None,
        externalId: str | None = None,
        type: str | None = Query(None, pattern="^(DECLARATIVE|IMPERATIVE)$"),
        active: bool | None = None,
    ) -> dict[str, Any]:
        rows, total = store.list_schedules(
            env, task_id=task, external_id=externalId, type=type, active=active,
            limit=perPage, offset=(page - 1) * perPage,
        )
        return {
            "data": [as_json(s) for s in rows],
            "pagination": {"currentPage": page, "totalPages": math.ceil(total / perPage),
                           "count": total},
        }

    @router.post("/api/v1/schedules", summary="Create a schedule (an upsert by deduplicationKey)")
    def create_schedule(body: CreateScheduleBody, env: Env) -> dict[str, Any]:
        s, _ = _schedule_crud.create(
            store, env, task=body.task, cron=body.cron, timezone=body.timezone,
            external_id=body.externalId, deduplication_key=body.deduplicationKey,
        )
        return as_json(s)

    @router.get("/api/v1/schedules/{schedule_id}", summary="Retrieve a schedule")
    def retrieve_schedule(schedule_id: str, env: Env) -> dict[str, Any]:
        return as_json(_schedule_crud.get(store, env, schedule_id))

    @router.put("/api/v1/schedules/{schedule_id}", summary="Update an imperative schedule")
    def update_schedule(schedule_id: str, body: UpdateScheduleBody, env: Env) -> dict[str, Any]:
        changes: dict[str, Any] = {"task": body.task, "cron": body.cron,
                                   "timezone": body.timezone}
        if "externalId" in body.model_fields_set:
            changes["external_id"] = body.externalId
        return as_json(_schedule_crud.update(store, env, schedule_id, **changes))

    @router.delete("/api/v1/schedules/{schedule_id}", summary="Delete an imperative schedule")
    def delete_schedule(schedule_id: str, env: Env) -> dict[str, Any]:
        return as_json(_schedule_crud.delete(store, env, schedule_id))


def _activation_routes(router: APIRouter, store: ScheduleStore, env_dependency: Any) -> None:
    """Activate and deactivate a schedule; the time zones a schedule may use."""
    Env = Annotated[str, Depends(env_dependency)]
    as_json = _schedule_client.schedule_json

    @router.post("/api/v1/schedules/{schedule_id}/activate",
                 summary="Activate: fire from the next slot after now")
    def activate_schedule(schedule_id: str, env: Env) -> dict[str, Any]:
        return as_json(_schedule_crud.set_active(store, env, schedule_id, True))

    @router.post("/api/v1/schedules/{schedule_id}/deactivate", summary="Deactivate")
    def deactivate_schedule(schedule_id: str, env: Env) -> dict[str, Any]:
        return as_json(_schedule_crud.set_active(store, env, schedule_id, False))

    @router.get("/api/v1/timezones", summary="The IANA time zones a schedule may use")
    def timezones(env: Env, excludeUtc: bool = False) -> dict[str, Any]:
        names = _cron.timezones()
        if not excludeUtc:
            names = ["UTC", *(n for n in names if n != "UTC")]
        else:
            names = [n for n in names if n != "UTC"]
        return {"timezones": names}
