"""Usage and advice over HTTP: ``GET /api/v1/usage`` (runs, run-minutes, spikes per task)
and ``GET /api/v1/advise`` (which of the five conditions each task trips), the same
JSON as ``outlast usage --json`` and ``outlast advise --json``."""


from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from .._advise import MIN_RUNS, REQUEST_WALL, SERVERLESS_WALL, advise
from .._usage import parse_since, price_per_run_minute, usage_report
from ..store.base import Store

_SINCE = Query("30d", max_length=16, description="how far back: 30d, 12h, 2w, 90m")
_TASK = Query(None, max_length=128, pattern="^[^\\x00]*$", description="one task id")


def build_usage_router(store: Store, env_dependency: Any) -> APIRouter:
    router = APIRouter(tags=["usage"])
    Env = Annotated[str, Depends(env_dependency)]

    @router.get("/api/v1/usage", summary="Usage per task: runs, run-minutes, spikes")
    def get_usage(
        env: Env,
        since: str = _SINCE,
        task: str | None = _TASK,
        by: str = Query("day", pattern="^(day|week)$"),
    ) -> dict[str, Any]:
        return usage_report(
            store, env, since=parse_since(since), task_id=task,
            by="week" if by == "week" else "day", price=price_per_run_minute(store),
        )

    @router.get("/api/v1/advise", summary="Which of the five conditions each task trips")
    def get_advice(
        env: Env,
        since: str = _SINCE,
        task: str | None = _TASK,
        requestWall: float = Query(REQUEST_WALL, gt=0, le=1e9),
        serverlessWall: float = Query(SERVERLESS_WALL, gt=0, le=1e9),
        minRuns: int = Query(MIN_RUNS, ge=1, le=1_000_000_000),
    ) -> dict[str, Any]:
        found = advise(
            store, env, since=parse_since(since), task_id=task, request_wall=requestWall,
            serverless_wall=serverlessWall, min_runs=minRuns,
        )
        return {"data": [a.to_dict() for a in found]}

    return router
