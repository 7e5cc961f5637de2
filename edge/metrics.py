"""Prometheus metrics of the edge: requests by route and status, and their latency."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from edge.auth import authenticate

REQUESTS = Counter(
    "llmserve_edge_requests", "HTTP requests answered, by route and status.", ["route", "status"]
)
LATENCY = Histogram(
    "llmserve_edge_request_seconds",
    "Time until the response started (streams: until the first chunk).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class MetricsMiddleware:
    """Counts every HTTP response by its route template (not the raw path: bounded labels)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observe(message):
            if message["type"] == "http.response.start":
                route = scope.get("route")
                label = getattr(route, "path", "unmatched")
                REQUESTS.labels(label, str(message["status"])).inc()
                LATENCY.labels(label).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, observe)


def metrics_router(public: bool) -> APIRouter:
    """GET /metrics; it takes an API key like every route unless `public`."""
    router = APIRouter(dependencies=[] if public else [Depends(authenticate)])

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
