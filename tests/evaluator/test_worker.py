"""The progress pipeline against real Redis Streams and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest
import redis.asyncio as aioredis

from learner_api.streams import CONSUMER_GROUP, FIELD
from tests.api.conftest import ADMIN_URL, admin_execute, with_database
from tests.evaluator.conftest import entry, make_worker, rows


async def test_duplicates_are_stored_once_and_counted_once(redis_client: aioredis.Redis, pool: asyncpg.Pool,
                                                           stream: str, tenant: str, admin_database_url: str) -> None:
    worker = make_worker(redis_client, pool, stream)
    await worker.setup()
    same = entry(tenant, verb="lesson_completed")
    for fields in (same, entry(tenant), same):
        await redis_client.xadd(stream, fields)
    while await worker.step():
        pass
    assert await rows(admin_database_url, tenant) == 2
    assert worker.metrics.lesson_completed._value.get() == 1
    assert worker.metrics.lesson_views._value.get() == 1
    assert (await redis_client.xpending(stream, CONSUMER_GROUP))["pending"] == 0
    connection = await asyncpg.connect(admin_database_url)
    try:
        progress = await connection.fetchrow(
            "SELECT first_viewed_at, completed_at FROM lesson_progress WHERE tenant_id = $1", tenant)
    finally:
        await connection.close()
    assert progress["first_viewed_at"] is not None
    assert progress["completed_at"] is not None


async def test_another_replica_claims_what_a_dead_consumer_left(redis_client: aioredis.Redis, pool: asyncpg.Pool,
                                                                stream: str, tenant: str,
                                                                admin_database_url: str) -> None:
    survivor = make_worker(redis_client, pool, stream, consumer="pod-b", claim_idle=0.2, claim_interval=0.0)
    await survivor.setup()
    for _ in range(20):
        await redis_client.xadd(stream, entry(tenant))
    # pod-a reads them and dies before writing anything
    taken = await redis_client.xreadgroup(CONSUMER_GROUP, "pod-a", {stream: ">"}, count=100)
    assert len(taken[0][1]) == 20
    assert await survivor.step() == 0  # too fresh to claim: pod-a may still be working on them
    await asyncio.sleep(0.3)
    assert await survivor.step() == 20
    assert await rows(admin_database_url, tenant) == 20
    consumers = {c["name"]: c["pending"] for c in await redis_client.xinfo_consumers(stream, CONSUMER_GROUP)}
    assert consumers == {b"pod-a": 0, b"pod-b": 0}


async def test_a_poison_entry_is_dead_lettered_after_n_tries_without_blocking_others(
        redis_client: aioredis.Redis, pool: asyncpg.Pool, stream: str, tenant: str, admin_database_url: str) -> None:
    worker = make_worker(redis_client, pool, stream, claim_idle=0.05, claim_interval=0.0, max_deliveries=3)
    await worker.setup()
    await redis_client.xadd(stream, entry(tenant))
    poison_id = await redis_client.xadd(stream, entry(tenant, learner="nul\x00byte"))  # PostgreSQL refuses NUL
    await redis_client.xadd(stream, {FIELD: b"{not json"})
    await redis_client.xadd(stream, entry(tenant))
    await worker.step()
    assert await rows(admin_database_url, tenant) == 2  # the good ones did not wait for the poison
    dead = await redis_client.xrange(f"{stream}:dead")
    assert [d[1][b"reason"].decode()[:20] for d in dead] == ["not a progress event"]
    for _ in range(10):
        await asyncio.sleep(0.06)
        await worker.step()
    dead = await redis_client.xrange(f"{stream}:dead")
    assert len(dead) == 2
    assert dead[1][1][b"source_id"] == poison_id
    assert dead[1][1][b"reason"].startswith(b"failed 3 times")
    assert b'"learner":"nul\\u0000byte"' in dead[1][1][FIELD.encode()]  # the entry is kept whole
    assert (await redis_client.xpending(stream, CONSUMER_GROUP))["pending"] == 0
    assert worker.metrics.events.labels("dead_lettered")._value.get() == 2
    assert (await worker.observe())["dead_letters"] == 2


async def test_trimming_keeps_what_is_still_pending(redis_client: aioredis.Redis, pool: asyncpg.Pool, stream: str,
                                                    tenant: str) -> None:
    worker = make_worker(redis_client, pool, stream)
    await worker.setup()
    for _ in range(5):
        await redis_client.xadd(stream, entry(tenant))
    held = await redis_client.xreadgroup(CONSUMER_GROUP, "pod-slow", {stream: ">"}, count=1)  # one stays pending
    while await worker.step():
        pass
    later = [await redis_client.xadd(stream, entry(tenant)) for _ in range(2)]  # not delivered yet
    await worker.trim()
    remaining = [entry_id for entry_id, _ in await redis_client.xrange(stream)]
    assert remaining[0] == held[0][1][0][0]
    assert remaining[-2:] == later


async def test_an_unmigrated_database_is_not_blamed_on_the_entries(redis_client: aioredis.Redis, stream: str,
                                                                   tenant: str) -> None:
    name = f"learner_empty_{secrets.token_hex(4)}"
    await admin_execute(f'CREATE DATABASE "{name}"')
    pool = await asyncpg.create_pool(with_database(ADMIN_URL, name), min_size=0)
    try:
        worker = make_worker(redis_client, pool, stream, max_deliveries=1)
        await worker.setup()
        await redis_client.xadd(stream, entry(tenant))
        for _ in range(3):
            worker._own_pending = True  # as run() does after a failure: read them again
            with pytest.raises(asyncpg.UndefinedTableError):
                await worker.step()
        assert await redis_client.xlen(f"{stream}:dead") == 0  # not dead-lettered, though max_deliveries is 1
        assert (await redis_client.xpending(stream, CONSUMER_GROUP))["pending"] == 1  # waiting for the schema
    finally:
        await pool.close()
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
