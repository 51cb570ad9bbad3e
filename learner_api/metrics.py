"""HTTP RED metrics by route template (never by raw path: ids would explode the series)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("http_requests_total", "HTTP requests by route template and status class.",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency by route template.",
                                 ["method", "route"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


def install(app: FastAPI, metrics: HttpMetrics) -> None:
    @app.middleware("http")
    async def _measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.latency.labels(request.method, template).observe(time.perf_counter() - start)
            metrics.requests.labels(request.method, template, f"{status // 100}xx").inc()

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
