"""Tenant A cannot read or write tenant B's data: by the API, and by PostgreSQL's row-level security
when a query forgets its tenant."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from learner_api.app import check_role
from learner_api.seed import seed
from learner_api.settings import ConfigError, Settings
from tests.api.conftest import REDIS_URL, admin_execute, bearer
from tests.api.test_store import deliver, payment


async def test_guessing_another_tenants_ids_finds_nothing(client: httpx.AsyncClient, admin_database_url: str,
                                                          tenant: str, database_url: str) -> None:
    other = tenant + "-b"
    await seed(database_url, REDIS_URL, other)
    await admin_execute("INSERT INTO courses (tenant_id, id, title) VALUES ($1, 'a-only', 'A only')", tenant,
                        url=admin_database_url)
    await admin_execute("INSERT INTO lessons (tenant_id, id, course_id, position, title, body)"
                        " VALUES ($1, 'a-secret', 'a-only', 0, 'Secret', 'for A')", tenant, url=admin_database_url)
    assert (await client.get("/v1/lessons/a-secret", headers=bearer("ada", tenant))).status_code == 200
    assert (await client.get("/v1/lessons/a-secret", headers=bearer("ada", other))).status_code == 404
    assert (await client.get("/v1/courses/a-only", headers=bearer("ada", other))).status_code == 404
    refused = await client.post("/v1/enrollments", json={"course_id": "a-only"}, headers=bearer("ada", other))
    assert refused.status_code == 404

    # A's purchase: B's learner with the same name sees no entitlement, and cannot fulfil A's order
    order = (await client.post("/v1/checkout", json={"product_id": "python-101-full"},
                               headers={**bearer("ada", tenant), "Idempotency-Key": "k"})).json()["order"]
    crossed = await deliver(client, payment(other, order))
    assert crossed.status_code == 422
    assert "no order" in crossed.json()["detail"]
    assert (await client.get("/v1/entitlements", headers=bearer("ada", other))).json()["items"] == []
    # the same Idempotency-Key in another tenant is another key
    theirs = await client.post("/v1/checkout", json={"product_id": "python-101-full"},
                               headers={**bearer("ada", other), "Idempotency-Key": "k"})
    assert theirs.status_code == 201
    assert theirs.json()["order"]["id"] != order["id"]


async def test_row_level_security_is_the_backstop(database_url: str, tenant: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        # no tenant set: nothing at all is visible
        assert await connection.fetchval("SELECT count(*) FROM courses") == 0
        async with connection.transaction():
            await connection.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            tenants = {r["tenant_id"] for r in await connection.fetch("SELECT tenant_id FROM lessons")}
            assert tenants == {tenant}  # a query without WHERE tenant_id still sees one tenant
        async with connection.transaction():
            await connection.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await connection.execute("INSERT INTO enrollments (tenant_id, learner_id, course_id)"
                                         " VALUES ('someone-else', 'ada', 'python-101')")
        # set_config(..., true) ends with the transaction: a pooled connection carries nothing over
        assert await connection.fetchval("SELECT count(*) FROM lessons") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("DELETE FROM lessons")  # and the app role may not delete content
    finally:
        await connection.close()


async def test_serving_as_a_role_that_bypasses_rls_is_refused(admin_database_url: str) -> None:
    settings = Settings(database_url=admin_database_url, redis_url="redis://x", node_env="production",  # type: ignore[arg-type]
                        allow_insecure_connections=True)
    pool = await asyncpg.create_pool(admin_database_url, min_size=0)
    try:
        with pytest.raises(ConfigError, match="superuser or BYPASSRLS"):
            await check_role(pool, settings)
    finally:
        await pool.close()
