"""Probes, errors and metrics of learner-api against real PostgreSQL and Redis."""

from __future__ import annotations

import httpx

from learner_api.app import create_app
from tests.api.conftest import DEAD_PORT, client_for, scrape, settings_for


async def test_livez_needs_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/livez")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_checks_postgres_and_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


async def test_readyz_names_the_dependency_that_is_down(database_url: str) -> None:
    down = [("redis", settings_for(database_url, redis_url=f"redis://127.0.0.1:{DEAD_PORT}/0")),
            ("postgresql", settings_for(database_url.replace(":5432/", f":{DEAD_PORT}/")))]
    for name, settings in down:
        async for client in client_for(create_app(settings)):
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "5"
            body = response.json()
            assert body["unavailable"] == [name]
            assert name in body["detail"]
            assert "127.0.0.1" not in body["detail"]  # no connection details leak
            assert (await client.get("/livez")).status_code == 200  # alive, just not ready


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/no-such-thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 404
    assert problem["instance"] == "/v1/no-such-thing"
    assert "/docs" in problem["detail"]


async def test_metrics_label_routes_by_template_not_by_path(client: httpx.AsyncClient) -> None:
    await client.get("/livez")
    await client.get("/v1/lessons/lesson-123456")
    await client.get("/v1/nothing/123456")
    text = scrape(client)
    assert 'http_requests_total{method="GET",route="/livez",status="2xx"} 1.0' in text
    assert 'route="unmatched",status="4xx"' in text
    assert 'route="/v1/lessons/{lesson_id}",status="4xx"' in text  # 401: no token
    assert "123456" not in text
