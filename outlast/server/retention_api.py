"""Retention over HTTP: /api/v1/retention.

``GET`` answers the environment's policy: ``{"env", "days", "default", "tasks"}`` (days
null: kept for ever; default true: no policy set, the default applies). ``PUT`` with
``{"days": N}`` (or null) sets the environment's policy; ``PUT …/tasks/{task_id}`` a
task's override, ``DELETE`` removes one. ``GET …/preview`` counts what pruning would
delete now (the dry run); the schedulers prune continuously.
"""

# No `from __future__ import annotations`: FastAPI must see the local Env alias itself.
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from .. import _retention
from .._errors import RetentionPolicyNotFound
from ..store.base import Store


class RetentionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: float | None = Field(..., gt=0, le=36500,
                               description="days a finished run is kept; null: for ever")


def build_retention_router(store: Store, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["retention"])
    Env = Annotated[str, Depends(env_dependency)]
    TaskId = Annotated[str, Path(max_length=128)]

    def policy(env: str) -> dict[str, Any]:
        return _retention.effective_policy(store, env).to_dict()

    @router.get("/api/v1/retention", summary="How long finished runs are kept")
    def get(env: Env) -> dict[str, Any]:
        return policy(env)

    @router.put("/api/v1/retention", summary="Set the environment's retention")
    def put(body: RetentionBody, env: Env) -> dict[str, Any]:
        store.set_retention_policy(env, None, _retention.check_days(body.days))
        return policy(env)

    @router.put("/api/v1/retention/tasks/{task_id}", summary="Set a task's retention override")
    def put_task(task_id: TaskId, body: RetentionBody, env: Env) -> dict[str, Any]:
        store.set_retention_policy(env, task_id, _retention.check_days(body.days))
        return policy(env)

    @router.delete("/api/v1/retention/tasks/{task_id}",
                   summary="Remove a task's retention override")
    def delete_task(task_id: TaskId, env: Env) -> dict[str, Any]:
        if not store.delete_retention_policy(env, task_id):
            raise RetentionPolicyNotFound(f"no retention override for task {task_id!r}",
                                          field="task_id")
        return policy(env)

    @router.get("/api/v1/retention/preview", summary="Count the runs pruning would delete now")
    def preview(env: Env) -> dict[str, Any]:
        return _retention.prune(store, env=env, dry_run=True).to_dict()

    return router
