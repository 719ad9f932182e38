"""Versions over HTTP (C11): /api/v1/versions to list them, promote one (a rollback),
and migrate unfinished runs from one version to another."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from .. import _versions
from ..store.base import Store


class MigrateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(..., alias="from", min_length=1, max_length=100)
    to: str = Field(..., min_length=1, max_length=100)
    task: str | None = Field(None, min_length=1, max_length=128, description="only this task")


def build_versions_router(store: Store, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["versions"])
    Env = Annotated[str, Depends(env_dependency)]

    @router.get("/api/v1/versions", summary="Task code versions, newest first")
    def list_versions(env: Env) -> dict[str, Any]:
        rows = _versions.version_table(store, env)
        return {"data": [_versions.version_json(v) for v in rows]}

    @router.post("/api/v1/versions/{version}/promote",
                 summary="Make a version current: new runs go to it")
    def promote(env: Env, version: str) -> dict[str, Any]:
        _versions.promote(store, env, version)
        return {"version": version, "current": True, "pinned": True}

    @router.post("/api/v1/versions/migrate",
                 summary="Re-lock unfinished runs of one version to another")
    def migrate(env: Env, body: MigrateBody) -> dict[str, Any]:
        n = _versions.migrate(store, env, body.from_, body.to, body.task)
        return {"from": body.from_, "to": body.to, "task": body.task, "migrated": n}

    return router
