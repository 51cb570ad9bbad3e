"""learner-api and the evaluator on a real Redis Cluster (three masters with a replica each, started by the
fixture): progress posted through the API while a slot moves to another master, or a master fails over
to its replica, is stored exactly once, and the accept script's dedupe never lets an event in twice."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from learner_api.app import create_app
from learner_api.content_cache import document_key, version_key
from learner_api.evaluator import service
from learner_api.redis_client import progress_streams
from learner_api.settings import Settings
from learner_api.streams import ProgressStreams
from tests.api.conftest import bearer, client_for, counter, settings_for
from tests.evaluator.redis_cluster import Cluster, redis_cluster
from tests.net import free_port

SHARDS = 4
ROUNDS = 25
EVENTS_PER_POST = 10


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as started:
        yield started


@pytest.fixture
async def cluster_client(cluster: Cluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    yield client
    await client.aclose()


def cluster_settings(database_url: str, cluster: Cluster) -> Settings:
    return settings_for(database_url, redis_url=cluster.url, redis_cluster=True, progress_stream_shards=SHARDS,
                        progress_stream=f"test:{secrets.token_hex(4)}:progress", metrics_port=free_port(),
                        pod_name="evaluator-cluster", evaluator_batch_size=200)


async def stored(admin_database_url: str, tenants: list[str]) -> int:
    connection = await asyncpg.connect(admin_database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM progress_events WHERE tenant_id = ANY($1)",
                                             tenants))
    finally:
        await connection.close()


async def post_until_accepted(api: httpx.AsyncClient, tenant: str, learner: str,
                              events: list[dict[str, object]]) -> dict[str, int]:
    """As a client would: the same batch again until it is taken (a 503 while the cluster reshuffles)."""
    for _ in range(100):
        response = await api.post("/v1/progress", json={"events": events}, headers=bearer(learner, tenant))
        if response.status_code == 202:
            return dict(response.json())
        assert response.status_code == 503, response.text
        await asyncio.sleep(0.05)
    raise AssertionError("never accepted")


async def exercise(cluster: Cluster, settings: Settings, admin_database_url: str,
                   disrupt: Callable[[int], int]) -> None:
    streams = progress_streams(settings)
    tenants = [f"t-{secrets.token_hex(3)}-{i}" for i in range(8)]
    victim = tenants[0]
    slot = RedisCluster.keyslot(RedisCluster.from_url(cluster.url), streams.stream_for(victim))  # type: ignore[arg-type]
    total = len(tenants) * ROUNDS * EVENTS_PER_POST
    accepted = duplicates = 0
    during = [0.0, 0.0]
    posted_at: list[float] = []
    spans: list[tuple[float, float]] = []
    stop = asyncio.Event()
    evaluator = asyncio.create_task(service.run(settings, stop, claim_interval=0.2))
    try:
        async for api in client_for(create_app(settings)):
            async def post(api: httpx.AsyncClient, round_: int, tenant: str) -> None:
                nonlocal accepted, duplicates
                events = [{"id": str(uuid.uuid4()), "verb": "lesson_viewed", "lesson_id": f"lesson-{round_}-{i}",
                           "occurred_at": datetime.now(UTC).isoformat()} for i in range(EVENTS_PER_POST)]
                started = time.monotonic()
                outcome = await post_until_accepted(api, tenant, f"learner-{round_ % 3}", events)
                again = await post_until_accepted(api, tenant, f"learner-{round_ % 3}", events)  # a client's retry
                accepted += outcome["accepted"] + again["accepted"]
                duplicates += outcome["duplicates"] + again["duplicates"]
                posted_at.append(time.monotonic())
                spans.append((started, time.monotonic()))

            async def disruption() -> None:
                while len(posted_at) < len(tenants) * 3:  # noqa: ASYNC110  # after some traffic
                    await asyncio.sleep(0.01)
                during[0] = time.monotonic()
                await asyncio.to_thread(disrupt, slot)
                during[1] = time.monotonic()

            async def traffic(api: httpx.AsyncClient) -> None:
                for round_ in range(ROUNDS):
                    await asyncio.gather(*(post(api, round_, tenant) for tenant in tenants))
                    await asyncio.sleep(0.02)

            await asyncio.gather(traffic(api), disruption())
        deadline = time.monotonic() + 60
        while (count := await stored(admin_database_url, tenants)) < total and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")).text
    finally:
        stop.set()
        await asyncio.wait_for(evaluator, 30)
    assert any(start <= during[1] and end >= during[0] for start, end in spans), "no post while the cluster changed"
    assert count == total  # nothing lost, nothing twice
    assert counter(metrics, "lesson_views_total") == total  # each counted once, redeliveries or not
    # No event was taken twice: a retry found its first attempt's dedupe keys, even where the first
    # attempt's answer was lost (a 503 from a master that was handing over, though its script had run).
    assert accepted <= total
    assert accepted + duplicates == 2 * total
    client = RedisCluster.from_url(cluster.url)
    try:
        for stream in streams.streams:
            assert await client.xlen(f"{stream}:dead") == 0
            assert (await client.xpending(stream, "evaluator"))["pending"] == 0
    finally:
        await client.aclose()


async def test_every_key_of_a_batch_shares_a_slot(cluster_client: RedisCluster) -> None:
    streams = ProgressStreams("lp:progress", SHARDS, cluster=True)
    for tenant in ("acme", "globex", "initech", "umbrella"):
        stream = streams.stream_for(tenant)
        keys = [stream, f"{stream}:dead", streams.dedupe_key(tenant, str(uuid.uuid4()))]
        assert len({cluster_client.keyslot(key) for key in keys}) == 1
    assert len({cluster_client.keyslot(stream) for stream in streams.streams}) == SHARDS


async def test_progress_is_stored_exactly_once_while_a_slot_moves_to_another_master(
        cluster: Cluster, database_url: str, admin_database_url: str) -> None:
    moved: list[int] = []

    def migrate(slot: int) -> int:
        moved.append(cluster.owner(slot)[0])
        port = cluster.migrate_slot(slot, chunk=5, pause=0.05)
        moved.append(port)
        return port

    await exercise(cluster, cluster_settings(database_url, cluster), admin_database_url, migrate)
    assert moved[0] != moved[1]


async def test_progress_is_stored_exactly_once_while_a_master_fails_over(
        cluster: Cluster, database_url: str, admin_database_url: str) -> None:
    await exercise(cluster, cluster_settings(database_url, cluster), admin_database_url, cluster.fail_over)


def test_one_redis_keeps_the_key_names_it_always_had(database_url: str) -> None:
    streams = progress_streams(settings_for(database_url, progress_stream="lp:progress"))
    assert streams.streams == ["lp:progress"]
    assert streams.stream_for("acme") == "lp:progress"
    assert streams.dedupe_key("acme", "e1") == "t:acme:pe:e1"
    clustered = progress_streams(settings_for(database_url, progress_stream="lp:progress", redis_cluster=True))
    assert len(clustered.streams) == 12
    assert clustered.streams[0] == "lp:progress:{p0}"


def test_shards_without_a_cluster_are_refused(database_url: str) -> None:
    with pytest.raises(ValueError, match="PROGRESS_STREAM_SHARDS above 1 needs REDIS_CLUSTER=true"):
        settings_for(database_url, progress_stream_shards=4)


async def test_a_tenants_content_keys_share_its_slot(cluster_client: RedisCluster) -> None:
    for tenant in ("acme", "globex"):
        keys = [version_key(tenant), document_key(tenant, 3, "lesson:intro"), document_key(tenant, 4, "courses")]
        assert len({cluster_client.keyslot(key) for key in keys}) == 1
        await cluster_client.set(keys[0], b"3")
        assert await cluster_client.get(keys[0]) == b"3"
        await cluster_client.delete(keys[0])
