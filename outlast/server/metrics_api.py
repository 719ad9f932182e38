"""``GET /metrics``: Prometheus text for this server (``outlast._metrics``): the queue and
worker gauges from the database, and what this process counted (triggers it took, dead
workers its scheduler reaped). Open like a health check; keep it off the public
internet with the rest of the server's private routes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from ..store.base import Store


def build_metrics_router(store: Store) -> APIRouter:
    router = APIRouter()
    registry = None
    try:
        from .. import _metrics

        registry = _metrics.enable(store)
    except Exception as exc:  # prometheus_client missing: say how to get it
        missing = str(exc)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if registry is None:
            return PlainTextResponse(missing, status_code=501)
        # The gauges read the store: off the loop, like every other store call here.
        body, content_type = await asyncio.to_thread(_metrics.exposition, registry)
        return Response(body, media_type=content_type)

    return router
