"""What one bad entry, a Redis that comes back empty, or a hung database does to the pipeline (issue 11),
against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import string
import uuid

import asyncpg
import httpx
import redis.asyncio as aioredis

from learner_api.evaluator import service
from learner_api.streams import CONSUMER_GROUP, FIELD, TENANT_FIELD
from tests.api.conftest import settings_for
from tests.evaluator.conftest import entry, make_worker, rows
from tests.net import free_port


def huge_learner() -> str:
    """A learner id that does not compress below PostgreSQL's index row limit (2,704 bytes)."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8000))


async def test_an_index_row_too_large_is_dead_lettered_and_no_tenant_waits_for_it(
        redis_client: aioredis.Redis, pool: asyncpg.Pool, stream: str, tenant: str, admin_database_url: str) -> None:
    other = f"{tenant}-b"
    worker = make_worker(redis_client, pool, stream, claim_idle=0.05, claim_interval=0.0, max_deliveries=2)
    await worker.setup()
    await redis_client.xadd(stream, entry(tenant))
    poison = await redis_client.xadd(stream, entry(tenant, learner=huge_learner()))  # SQLSTATE 54000
    for _ in range(3):
        await redis_client.xadd(stream, entry(other))
    await redis_client.xadd(stream, entry(tenant))
    await worker.step()
    assert await rows(admin_database_url, tenant) == 2  # its own tenant's other events went through
    assert await rows(admin_database_url, other) == 3  # and so did another tenant's, in the same batch
    assert (await redis_client.xpending(stream, CONSUMER_GROUP))["pending"] == 1  # the one at fault waits
    for _ in range(10):
        await asyncio.sleep(0.06)
        await worker.step()
    [(_, dead)] = await redis_client.xrange(f"{stream}:dead")
    assert dead[b"source_id"] == poison
    assert dead[b"reason"].startswith(b"failed 2 times; last: ProgramLimitExceededError")
    assert (await redis_client.xpending(stream, CONSUMER_GROUP))["pending"] == 0
    assert worker.metrics.lesson_views._value.get() == 5


async def test_characters_postgresql_cannot_store_are_isolated(redis_client: aioredis.Redis, pool: asyncpg.Pool,
                                                              stream: str, tenant: str,
                                                              admin_database_url: str) -> None:
    worker = make_worker(redis_client, pool, stream, max_deliveries=1)
    await worker.setup()
    ids = []
    for learner in ("nul\x00byte", "lone\ud800surrogate", "ada"):
        data = json.dumps({"tenant": tenant, "learner": learner, "id": str(uuid.uuid4()), "verb": "lesson_viewed",
                           "lesson_id": "intro", "occurred_at": "2025-01-01T00:00:00+00:00"})
        ids.append(await redis_client.xadd(stream, {TENANT_FIELD: tenant, FIELD: data.encode()}))
    ids.append(await redis_client.xadd(stream, {TENANT_FIELD: tenant, FIELD: b'{"tenant": "\xff\xfe not utf-8"}'}))
    await worker.step()
    assert await rows(admin_database_url, tenant) == 1
    reasons = {fields[b"source_id"]: fields[b"reason"].decode()
               for _, fields in await redis_client.xrange(f"{stream}:dead")}
    assert set(reasons) == {ids[0], ids[1], ids[3]}
    assert "0x00" in reasons[ids[0]]  # 22021: PostgreSQL's text cannot hold NUL (22P05 when it parses the JSON)
    assert "InvalidTextRepresentationError" in reasons[ids[1]]  # 22P02: a lone surrogate
    assert reasons[ids[3]].startswith("not a progress event")  # not even UTF-8: dead-lettered at once
    assert (await redis_client.xpending(stream, CONSUMER_GROUP))["pending"] == 0


async def test_a_redelivered_event_among_new_ones_is_stored_and_counted_once(
        redis_client: aioredis.Redis, pool: asyncpg.Pool, stream: str, tenant: str, admin_database_url: str) -> None:
    worker = make_worker(redis_client, pool, stream)
    await worker.setup()
    again = entry(tenant, verb="lesson_completed")
    await redis_client.xadd(stream, again)
    await worker.step()
    for fields in (entry(tenant), again, entry(tenant)):  # the API's dedupe key had expired, say
        await redis_client.xadd(stream, fields)
    await worker.step()
    assert await rows(admin_database_url, tenant) == 3
    assert worker.metrics.lesson_completed._value.get() == 1
    assert worker.metrics.lesson_views._value.get() == 2
    assert worker.metrics.events.labels("duplicate")._value.get() == 1
    assert await redis_client.xlen(f"{stream}:dead") == 0


async def test_values_that_cannot_travel_as_columns_are_stored_as_sent(
        redis_client: aioredis.Redis, pool: asyncpg.Pool, stream: str, tenant: str, admin_database_url: str) -> None:
    """A newline inside a value, an empty value, or a learner id that is a number: the batch goes to
    PostgreSQL as JSON instead of newline-joined columns, and every row is what the entry said."""
    worker = make_worker(redis_client, pool, stream)
    await worker.setup()
    batches = [[entry(tenant, learner="two\nlines"), entry(tenant, learner="ada")], [entry(tenant, learner="")]]
    numeric = json.loads(entry(tenant)[FIELD])
    numeric["learner"] = 42
    batches.append([{FIELD: json.dumps(numeric).encode()}, entry(tenant, learner="émile", lesson="leçon-1")])
    for batch in batches:
        for fields in batch:
            await redis_client.xadd(stream, {TENANT_FIELD: tenant, **fields})
        await worker.step()
    connection = await asyncpg.connect(admin_database_url)
    try:
        stored = {(row["learner_id"], row["lesson_id"]) for row in await connection.fetch(
            "SELECT learner_id, lesson_id FROM progress_events WHERE tenant_id = $1", tenant)}
    finally:
        await connection.close()
    assert stored == {("two\nlines", "python-101-hello"), ("ada", "python-101-hello"), ("", "python-101-hello"),
                      ("42", "python-101-hello"), ("émile", "leçon-1")}
    assert await redis_client.xlen(f"{stream}:dead") == 0


async def test_a_redis_that_comes_back_empty_gets_its_group_again(redis_client: aioredis.Redis, pool: asyncpg.Pool,
                                                                  stream: str, tenant: str,
                                                                  admin_database_url: str) -> None:
    worker = make_worker(redis_client, pool, stream)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await redis_client.xadd(stream, entry(tenant))
        await _until(lambda: rows(admin_database_url, tenant), 1)
        await redis_client.delete(stream)  # what a restart without persistence leaves
        await redis_client.xadd(stream, entry(tenant))  # learner-api's script makes the stream, not the group
        await redis_client.xadd(stream, entry(tenant))
        await _until(lambda: rows(admin_database_url, tenant), 3)
        assert not running.done()
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    groups = await redis_client.xinfo_groups(stream)
    assert [group["name"] for group in groups] == [CONSUMER_GROUP.encode()]


async def test_livez_fails_while_entries_wait_behind_a_hung_database_and_recovers(
        database_url: str, admin_database_url: str, stream: str, tenant: str, redis_client: aioredis.Redis) -> None:
    settings = settings_for(database_url, progress_stream=stream, metrics_port=free_port(), evaluator_stall_seconds=1.0,
                            pod_name=f"evaluator-{tenant}")
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(settings, stop, claim_interval=0.2))
    livez = f"http://127.0.0.1:{settings.metrics_port}/livez"
    blocker = await asyncpg.connect(admin_database_url)
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            await _until(lambda: _status(http, livez), 200)
            await asyncio.sleep(1.5)
            assert (await http.get(livez)).status_code == 200  # idle for longer than the limit is not stalled
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("LOCK TABLE progress_events IN ACCESS EXCLUSIVE MODE")  # the insert hangs
            await redis_client.xadd(stream, entry(tenant))
            await _until(lambda: _status(http, livez), 503, within=10)
            body = (await http.get(livez)).json()
            assert body["status"] == "stalled"
            assert body["streams"] == [stream]
            await transaction.rollback()
            await _until(lambda: rows(admin_database_url, tenant), 1)
            await _until(lambda: _status(http, livez), 200)
    finally:
        with contextlib.suppress(Exception):
            await blocker.close()
        stop.set()
        await asyncio.wait_for(running, 20)


async def _status(http: httpx.AsyncClient, url: str) -> int:
    try:
        return (await http.get(url)).status_code
    except httpx.TransportError:
        return 0


async def _until(check, expected: object, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while (value := await check()) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still {value!r}, not {expected!r}, after {within}s")
        await asyncio.sleep(0.05)
