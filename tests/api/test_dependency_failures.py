"""What learners see when a managed dependency is down (real servers, one of them pointed at a dead port)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import UTC, datetime

import asyncpg

from learner_api.app import create_app
from learner_api.dependencies import Database
from learner_api.problems import Problem
from tests.api.conftest import DEAD_PORT, bearer, client_for, settings_for

DEAD_REDIS = f"redis://127.0.0.1:{DEAD_PORT}/0"


def progress() -> dict[str, object]:
    return {"events": [{"id": str(uuid.uuid4()), "verb": "lesson_viewed", "lesson_id": "python-101-hello",
                        "occurred_at": datetime.now(UTC).isoformat()}]}


async def test_postgres_down_cached_content_and_progress_still_work(database_url: str, tenant: str,
                                                                    stream: str) -> None:
    headers = bearer("ada", tenant)
    async for healthy in client_for(create_app(settings_for(database_url, progress_stream=stream))):
        assert (await healthy.get("/v1/lessons/python-101-hello", headers=headers)).status_code == 200  # cached

    dead_postgres = database_url.replace(":5432/", f":{DEAD_PORT}/")
    async for client in client_for(create_app(settings_for(dead_postgres, progress_stream=stream))):
        cached = await client.get("/v1/lessons/python-101-hello", headers=headers)
        assert cached.status_code == 200
        assert cached.json()["title"] == "Hello, Python"

        uncached = await client.get("/v1/lessons/sql-basics-join", headers=headers)
        assert uncached.status_code == 503
        assert uncached.headers["content-type"] == "application/problem+json"
        assert uncached.headers["retry-after"] == "5"
        assert uncached.json()["unavailable"] == ["postgresql"]
        assert "127.0.0.1" not in uncached.text

        accepted = await client.post("/v1/progress", json=progress(), headers=headers)
        assert (accepted.status_code, accepted.json()["accepted"]) == (202, 1)
        assert (await client.get("/readyz")).status_code == 503
        checkout = await client.post("/v1/checkout", json={"product_id": "python-101-full"},
                                     headers={**headers, "Idempotency-Key": "k"})
        assert (checkout.status_code, checkout.headers["content-type"]) == (503, "application/problem+json")


async def test_redis_down_content_from_postgres_and_progress_refused_not_dropped(database_url: str,
                                                                                 tenant: str) -> None:
    async for client in client_for(create_app(settings_for(database_url, redis_url=DEAD_REDIS))):
        headers = bearer("ada", tenant)
        lesson = await client.get("/v1/lessons/sql-basics-select", headers=headers)
        assert (lesson.status_code, lesson.json()["title"]) == (200, "SELECT")
        courses = await client.get("/v1/courses", headers=headers)
        assert courses.status_code == 200

        for _ in range(2):  # the first fails on the connection, the next without waiting for it again
            refused = await client.post("/v1/progress", json=progress(), headers=headers)
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["retry-after"] == "2"
            assert refused.json()["unavailable"] == ["redis"]
        assert (await client.get("/readyz")).status_code == 503
        enrolled = await client.post("/v1/enrollments", json={"course_id": "sql-basics"}, headers=headers)
        assert enrolled.status_code == 201  # PostgreSQL-only features are unaffected


async def test_sessions_the_server_ends_mid_transaction_are_503s_and_the_pool_recovers(database_url: str) -> None:
    """A PostgreSQL restart or failover ends sessions under running transactions. Now and then (3 in 100 here)
    the server's goodbye reaches a connection after the pool took it back, and its next user met asyncpg's
    "InternalClientError: cannot switch to state ...": a 500 for a learner, and an evaluator that exited (the
    chaos soak, seed 12). Each such transaction must end as the 503 problem, and the pool serve afterwards."""
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    admin = await asyncpg.connect(database_url)
    database = Database(pool, timeout=5.0)
    outcomes: Counter[str] = Counter()
    rng = random.Random(12)  # noqa: S311  # when each session is ended: reproducible, not secret

    async def one() -> None:
        try:
            async with database.tenant("t-ended") as connection:
                pid = connection.get_server_pid()

                async def end_session() -> None:
                    await asyncio.sleep(rng.random() * 0.002)
                    await admin.execute("SELECT pg_terminate_backend($1)", pid)

                ending = asyncio.create_task(end_session())
                try:
                    await connection.execute("SELECT pg_sleep(0.003)")
                finally:
                    await ending
            outcomes["committed"] += 1
        except Problem as problem:
            outcomes[str(problem.status)] += 1

    try:
        for _ in range(300):
            await asyncio.gather(one(), one())
        async with database.tenant("t-ended") as connection:
            assert await connection.fetchval("SELECT 1") == 1
    finally:
        await admin.close()
        await pool.close()
    assert set(outcomes) <= {"committed", "503"}, outcomes  # and never an InternalClientError
    assert outcomes["503"] > 0, outcomes  # sessions were ended mid-transaction
