"""Content against real PostgreSQL and Redis: pages, ETags, cache invalidation, paid lessons."""

from __future__ import annotations

import httpx

from learner_api.app import create_app
from learner_api.content_cache import bump_version
from tests.api.conftest import admin_execute, bearer, client_for, settings_for


async def test_courses_come_in_pages_that_follow_a_cursor(client: httpx.AsyncClient, tenant: str) -> None:
    headers = bearer("ada", tenant)
    first = await client.get("/v1/courses", params={"limit": 2}, headers=headers)
    assert first.status_code == 200
    page = first.json()
    assert [c["id"] for c in page["items"]] == ["kubernetes-intro", "python-101"]
    assert page["items"][1]["lessons"] == 3
    second = (await client.get("/v1/courses", params={"limit": 2, "cursor": page["next_cursor"]},
                               headers=headers)).json()
    assert [c["id"] for c in second["items"]] == ["sql-basics"]
    assert second["next_cursor"] is None

    bad = await client.get("/v1/courses", params={"cursor": "!!not-ours!!"}, headers=headers)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    assert "cursor" in bad.json()["detail"]


async def test_a_course_has_its_outline_and_unknown_ones_are_404(client: httpx.AsyncClient, tenant: str) -> None:
    course = (await client.get("/v1/courses/python-101", headers=bearer("ada", tenant))).json()
    assert [(lesson["id"], lesson["paid"]) for lesson in course["lessons"]] == [
        ("python-101-hello", False), ("python-101-functions", False), ("python-101-files", True)]
    assert "body" not in course["lessons"][0]  # the outline, not the lessons themselves
    missing = await client.get("/v1/courses/no-such-course", headers=bearer("ada", tenant))
    assert (missing.status_code, missing.json()["detail"]) == (404, "there is no course 'no-such-course'")


async def test_etag_gives_304_and_cache_control_is_private(client: httpx.AsyncClient, tenant: str) -> None:
    headers = bearer("ada", tenant)
    first = await client.get("/v1/lessons/python-101-hello", headers=headers)
    assert first.status_code == 200
    assert first.json()["title"] == "Hello, Python"
    assert first.headers["cache-control"] == "private, max-age=60"
    etag = first.headers["etag"]
    again = await client.get("/v1/lessons/python-101-hello", headers={**headers, "If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    other = await client.get("/v1/lessons/python-101-hello", headers={**headers, "If-None-Match": '"stale"'})
    assert other.status_code == 200


async def test_publishing_new_content_invalidates_every_cache(database_url: str, admin_database_url: str,
                                                              tenant: str) -> None:
    app = create_app(settings_for(database_url, content_version_seconds=0))
    async for client in client_for(app):
        headers = bearer("ada", tenant)
        before = await client.get("/v1/lessons/sql-basics-join", headers=headers)
        await admin_execute("UPDATE lessons SET title = 'JOIN, revised' WHERE tenant_id = $1 AND id = $2",
                            tenant, "sql-basics-join", url=admin_database_url)
        cached = await client.get("/v1/lessons/sql-basics-join", headers=headers)
        assert cached.json()["title"] == "JOIN"  # not published yet: the cache still answers
        await bump_version(app.state.database, app.state.redis_guard, tenant)  # publish
        after = await client.get("/v1/lessons/sql-basics-join", headers={**headers,
                                                                          "If-None-Match": before.headers["etag"]})
        assert after.status_code == 200
        assert after.json()["title"] == "JOIN, revised"


async def test_a_paid_lesson_needs_an_entitlement(client: httpx.AsyncClient, admin_database_url: str,
                                                  tenant: str) -> None:
    refused = await client.get("/v1/lessons/python-101-files", headers=bearer("ada", tenant))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert "python-101" in refused.json()["detail"]
    assert "open()" not in refused.text
    await admin_execute(
        "INSERT INTO orders (tenant_id, id, learner_id, product_id, amount_cents, currency, status)"
        " VALUES ($1, '00000000-0000-0000-0000-000000000001', 'ada', 'python-101-full', 1900, 'EUR', 'paid');"
        , tenant, url=admin_database_url)
    await admin_execute(
        "INSERT INTO entitlements (tenant_id, learner_id, product_id, order_id)"
        " VALUES ($1, 'ada', 'python-101-full', '00000000-0000-0000-0000-000000000001')", tenant,
        url=admin_database_url)
    served = await client.get("/v1/lessons/python-101-files", headers=bearer("ada", tenant))
    assert served.status_code == 200
    assert "open()" in served.json()["body"]
    assert served.headers["cache-control"] == "private, no-cache"
    # the cache holds the lesson now; another learner is still asked for an entitlement, every time
    assert (await client.get("/v1/lessons/python-101-files", headers=bearer("grace", tenant))).status_code == 403


async def test_content_needs_a_token(client: httpx.AsyncClient, tenant: str) -> None:
    response = await client.get("/v1/courses")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
