"""Real Redis and PostgreSQL (the API tests' throwaway database), and real Pushgateway and Alertmanager
from Debian's packages, started on loopback ports for the session."""

from __future__ import annotations

import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from learner_api.dependencies import Database
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.evaluator.worker import Worker
from learner_api.progress_intake import stream_entry
from learner_api.streams import FIELD
from tests.api.conftest import (  # noqa: F401  # fixtures
    REDIS_URL,
    _roles_exist,
    admin_database_url,
    database_url,
    stream,
)
from tests.net import free_port, serving


def entry(tenant: str, *, event_id: str | None = None, verb: str = "lesson_viewed", learner: str = "ada",
          lesson: str = "python-101-hello") -> dict[str, bytes]:
    return {FIELD: stream_entry(tenant=tenant, learner=learner, event_id=event_id or str(uuid.uuid4()), verb=verb,
                                lesson_id=lesson, occurred_at=datetime.now(UTC).isoformat())}


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:  # noqa: F811
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def tenant() -> str:
    return f"t-{secrets.token_hex(4)}"


def make_worker(client: aioredis.Redis, pool: asyncpg.Pool, stream: str, consumer: str = "pod-a",  # noqa: F811
                **options: float) -> Worker:
    defaults: dict[str, float] = {"batch_size": 500, "block_ms": 50, "claim_idle": 60.0, "claim_interval": 60.0,
                                  "max_deliveries": 3, "trim_interval": 3600.0}
    settings = {**defaults, **options}
    return Worker(client, Database(pool, timeout=5), EvaluatorMetrics(), stream=stream, consumer=consumer,
                  batch_size=int(settings["batch_size"]), block_ms=int(settings["block_ms"]),
                  claim_idle=settings["claim_idle"], claim_interval=settings["claim_interval"],
                  max_deliveries=int(settings["max_deliveries"]), trim_interval=settings["trim_interval"])


async def rows(admin_database_url: str, tenant: str) -> int:  # noqa: F811
    connection = await asyncpg.connect(admin_database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM progress_events WHERE tenant_id = $1", tenant))
    finally:
        await connection.close()


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install {name} (scripts/test does this as root)")
    return found


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving([_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}"], url + "/-/ready"):
        yield url


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("alertmanager")
    config = root / "alertmanager.yml"
    config.write_text("route:\n  receiver: 'null'\n  group_wait: 0s\nreceivers:\n  - name: 'null'\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving([_binary("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={root}",
                  f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="], url + "/-/ready"):
        yield url
