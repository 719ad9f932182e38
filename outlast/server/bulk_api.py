"""Bulk actions over HTTP: /api/v1/bulk-actions.

``POST /api/v1/bulk-actions`` with ``{"action": "cancel"|"replay", "filter": {...},
"dry_run": true}`` answers the count; without ``dry_run`` it records the action (201) and
acts on nothing yet. ``POST /api/v1/bulk-actions/{id}/run`` runs batches for about
``RUN_SECONDS`` and answers the progress; a client calls it until ``status`` is no longer
``running`` (a request that dies mid-way loses at most its uncommitted batch, which the
next call does). ``GET`` one or the list; ``POST …/abort`` stops one.
"""

# No `from __future__ import annotations`: FastAPI must see the local Env alias itself.
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import _bulk
from ..store.base import Store

# A request's share of a long bulk action: long enough for many batches, short enough
# that no proxy times the request out.
RUN_SECONDS = 5.0


class BulkFilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, max_length=128, description="task id")
    status: list[str] | None = Field(None, max_length=16, description="run statuses")
    tag: str | None = Field(None, max_length=128)
    queue: str | None = Field(None, max_length=128)
    created_from: float | str | None = Field(None, description="epoch seconds or ISO 8601")
    created_to: float | str | None = Field(None, description="epoch seconds or ISO 8601")
    search: str | None = Field(None, max_length=512, description="a run id or idempotency key")
    version: str | None = Field(None, max_length=128,
                                description="code version (once runs carry versions)")


class CreateBulkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(..., pattern="^(cancel|replay)$")
    filter: BulkFilterBody | None = None
    dry_run: bool = Field(False, description="only count the matching runs")


class RunBulkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(_bulk.DEFAULT_BATCH, ge=1, le=_bulk.MAX_BATCH)


def build_bulk_router(store: Store, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["bulk actions"])
    Env = Annotated[str, Depends(env_dependency)]

    @router.post("/api/v1/bulk-actions", summary="Start a bulk cancel or replay, or count "
                 "its runs (dry_run)", status_code=201,
                 responses={201: {"description": "The bulk action, recorded; run it with "
                                  "POST …/run"},
                            200: {"description": "dry_run: {action, count}"}})
    def create(body: CreateBulkBody, env: Env) -> JSONResponse:
        given = body.filter.model_dump(exclude_none=True) if body.filter else {}
        f = _bulk.make_filter(body.action, **given)
        if body.dry_run:
            return JSONResponse({"action": body.action, "count": _bulk.count(store, env, f)})
        bulk = _bulk.start(store, env, body.action, f)
        return JSONResponse(bulk.to_dict(), status_code=201)

    @router.get("/api/v1/bulk-actions", summary="List bulk actions, newest first")
    def list_bulk(env: Env, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        return {"data": [b.to_dict() for b in store.list_bulk_actions(env, limit)]}

    @router.get("/api/v1/bulk-actions/{bulk_id}", summary="A bulk action's progress")
    def get(bulk_id: str, env: Env) -> dict[str, Any]:
        return _bulk.get(store, env, bulk_id).to_dict()

    @router.post("/api/v1/bulk-actions/{bulk_id}/run",
                 summary="Run batches for a few seconds; call again until not running")
    def run(bulk_id: str, env: Env, body: RunBulkBody | None = None) -> dict[str, Any]:
        size = body.batch_size if body is not None else _bulk.DEFAULT_BATCH
        return _bulk.run(store, env, bulk_id, size=size, max_seconds=RUN_SECONDS).to_dict()

    @router.post("/api/v1/bulk-actions/{bulk_id}/abort", summary="Stop a bulk action")
    def abort(bulk_id: str, env: Env) -> dict[str, Any]:
        return _bulk.abort(store, env, bulk_id).to_dict()

    return router
