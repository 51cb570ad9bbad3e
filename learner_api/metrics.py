"""HTTP RED metrics by route template (never by raw path: ids would explode the series), and the
business counters, each moved once per row that is really new (after its transaction committed).

Served on their own port (METRICS_PORT, `metrics_app`), never on the public API port: the business
counters are not for learners, and the NetworkPolicy lets only the scraper reach that port."""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Set by the edge when the client went away before it was answered (counted as 499, a 4xx).
CLIENT_GONE = "learner_api.client_gone"
CLIENT_CLOSED = 499


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("http_requests_total", "HTTP requests by route template and status class.",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency by route template.",
                                 ["method", "route"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class BusinessMetrics:
    """The API's share of the business counters; lesson_views_total and lesson_completed_total are the
    evaluator's, which is where progress rows are written."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.enrollments = Counter("course_enrollments_total", "Learners newly enrolled in a course.",
                                   registry=registry)
        self.purchases = Counter("purchase_completed_total", "Purchases completed (entitlements newly granted).",
                                 registry=registry)


class MetricsMiddleware:
    """Plain ASGI (no BaseHTTPMiddleware): it adds a few microseconds per request, not a task and a queue."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if status == 500 and scope.get(CLIENT_GONE):
                status = CLIENT_CLOSED  # nobody was answered: the client left, the server did not fail
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
            self.metrics.requests.labels(method, template, f"{status // 100}xx").inc()


def install(app: FastAPI, metrics: HttpMetrics) -> None:
    app.add_middleware(MetricsMiddleware, metrics=metrics)


def metrics_app(registry: CollectorRegistry) -> ASGIApp:
    """/metrics for the metrics port (`learner-api serve` runs it beside the API)."""
    return make_asgi_app(registry)
