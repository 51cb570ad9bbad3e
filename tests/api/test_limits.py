"""Rate limits per learner and per tenant on costly requests, counted in the real Redis across replicas;
and one order per Idempotency-Key even when the first request outlives its claim."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis

from learner_api.app import create_app
from learner_api.redis_keys import tenant_key
from tests.api.conftest import REDIS_URL, bearer, client_for, settings_for


def progress() -> dict[str, object]:
    return {"events": [{"id": str(uuid.uuid4()), "verb": "lesson_viewed", "lesson_id": "python-101-hello",
                        "occurred_at": datetime.now(UTC).isoformat()}]}


async def test_a_learner_past_the_limit_gets_429_with_retry_after(database_url: str, tenant: str,
                                                                  stream: str) -> None:
    app = create_app(settings_for(database_url, progress_stream=stream, rate_limit_per_learner=5,
                                  rate_limit_window_seconds=60))
    async for client in client_for(app):
        ada, grace = bearer("ada", tenant), bearer("grace", tenant)
        statuses = [(await client.post("/v1/progress", json=progress(), headers=ada)).status_code for _ in range(3)]
        statuses += [(await client.get("/v1/entitlements", headers=ada)).status_code for _ in range(2)]
        assert statuses == [202, 202, 202, 200, 200]
        refused = await client.post("/v1/enrollments", json={"course_id": "sql-basics"}, headers=ada)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "this learner" in refused.json()["detail"]
        assert (await client.get("/v1/products", headers=ada)).status_code == 429
        # cached reads cost PostgreSQL nothing and are not limited; another learner has a budget of their own
        assert (await client.get("/v1/lessons/python-101-hello", headers=grace)).status_code == 200
        assert (await client.get("/v1/lessons/python-101-hello", headers=ada)).status_code == 200
        assert (await client.get("/v1/me", headers=ada)).status_code == 200
        assert (await client.post("/v1/progress", json=progress(), headers=grace)).status_code == 202


async def test_limits_are_counted_across_replicas_in_redis_with_expiring_keys(database_url: str,
                                                                             tenant: str) -> None:
    settings = settings_for(database_url, rate_limit_per_learner=1000, rate_limit_per_tenant=6,
                            rate_limit_window_seconds=60)
    # The windows are fixed (wall clock): a test that crosses into the next one starts counting from 0 there.
    # Start in a window with at least 40 s left (a wait on the clock, at most 20 s).
    if (left := 60 - time.time() % 60) < 40:
        await asyncio.sleep(left + 0.1)
    redis = aioredis.from_url(REDIS_URL)

    async def tenant_count() -> int:
        keys = [key async for key in redis.scan_iter(tenant_key(tenant, "rl:*:all"), count=10_000)]
        return sum([int(await redis.get(key) or 0) for key in keys])

    async def counted(expected: int) -> None:  # each replica adds its counts to Redis within 0.1 s, or later
        deadline = time.monotonic() + 30
        while await tenant_count() < expected:
            assert time.monotonic() < deadline, f"Redis counts {await tenant_count()} of {expected} requests"
            await asyncio.sleep(0.05)

    async for first in client_for(create_app(settings)):
        async for second in client_for(create_app(settings)):
            for n, client in enumerate((first, second, first), start=1):
                for learner in ("ada", "grace"):
                    assert (await client.get("/v1/entitlements", headers=bearer(learner, tenant))).status_code == 200
                await counted(2 * n)
            await asyncio.sleep(0.3)  # `second`'s next flush (every 0.1 s) reads back the platform-wide count
            # 6 of 6 used, 4 of them through `second`, which has not heard of the last 2 yet: it may admit
            # one more before its next flush tells it the platform-wide count (the documented overshoot)
            answers = []
            for _ in range(3):
                answers.append(await second.get("/v1/entitlements", headers=bearer("linus", tenant)))
                await asyncio.sleep(0.3)
            assert [r.status_code for r in answers].count(200) <= 1
            assert answers[-1].status_code == 429
            assert "this tenant" in answers[-1].json()["detail"]
    try:
        keys = [key async for key in redis.scan_iter(tenant_key(tenant, "rl:*"), count=10_000)]
        assert len(keys) == 4  # one per learner seen (3) and one for the tenant, in this window
        for key in keys:
            assert 0 < await redis.ttl(key) <= 120
            assert len(key) < 100
    finally:
        await redis.aclose()


async def test_one_order_per_key_when_the_first_request_outlives_its_claim(database_url: str, tenant: str,
                                                                           admin_database_url: str) -> None:
    app = create_app(settings_for(database_url, idempotency_claim_seconds=0.5))
    async for client in client_for(app):
        headers = {**bearer("ada", tenant), "Idempotency-Key": f"slow-{secrets.token_hex(4)}"}
        lock = await asyncpg.connect(admin_database_url)
        try:
            transaction = lock.transaction()
            await transaction.start()
            await lock.execute("LOCK TABLE orders IN EXCLUSIVE MODE")  # every INSERT waits
            first = asyncio.create_task(client.post("/v1/checkout", json={"product_id": "python-101-full"},
                                                    headers=headers))
            await asyncio.sleep(1.0)  # past the claim's expiry: the retry takes the key over
            retry = asyncio.create_task(client.post("/v1/checkout", json={"product_id": "python-101-full"},
                                                    headers=headers))
            await asyncio.sleep(0.5)
            await transaction.commit()
        finally:
            await lock.close()
        responses = await asyncio.gather(first, retry)
        assert sorted(r.status_code for r in responses) == [201, 409]
        taken_over = next(r for r in responses if r.status_code == 409)
        assert "took over" in taken_over.json()["detail"]
        order = next(r for r in responses if r.status_code == 201).json()["order"]["id"]
        connection = await asyncpg.connect(admin_database_url)
        try:
            orders = await connection.fetch("SELECT id FROM orders WHERE tenant_id = $1", tenant)
        finally:
            await connection.close()
        assert [str(row["id"]) for row in orders] == [order]
        again = await client.post("/v1/checkout", json={"product_id": "python-101-full"}, headers=headers)
        assert (again.status_code, again.json()["order"]["id"]) == (201, order)
