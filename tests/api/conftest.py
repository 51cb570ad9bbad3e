"""Real PostgreSQL and Redis (scripts/test makes sure they answer).

One throwaway database per session, migrated by the superuser; the app connects as a login role that is
only a member of learner_app (not an owner, not a superuser), so row-level security really applies.
Tests stay independent by working in a tenant of their own and a Redis stream of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import generate_latest

from learner_api.app import create_app
from learner_api.migrate import migrate
from learner_api.seed import seed
from learner_api.settings import Settings

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: pytest-xdist's worker ("gw0", "gw1", ...): each worker has its own database (below) and Redis database
#: number, so that no worker sees another's keys (the content cache of the tenant "default", say).
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_REDIS_DB = 1 + int(WORKER[2:]) % 15 if WORKER.startswith("gw") else 0
REDIS_URL = os.environ.get("TEST_REDIS_URL", f"redis://127.0.0.1:6379/{_REDIS_DB}")
APP_ROLE = "learner_api_test"
JWT_SECRET = "test-signing-key-with-enough-entropy-0123456789"
WEBHOOK_SECRET = "test-webhook-secret-0123456789abcdef"
#: A port nothing listens on, for "the dependency is down".
DEAD_PORT = 1


def with_database(url: str, name: str, user: str | None = None) -> str:
    base = url.rsplit("/", 1)[0] + f"/{name}"
    return base.replace("postgres@", f"{user}@", 1) if user else base


async def admin_execute(sql: str, *args: object, url: str = ADMIN_URL) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def throwaway_database(prefix: str) -> AsyncIterator[str]:
    """An empty database of its own, dropped afterwards (a superuser URL to it)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


#: pg_advisory_lock key (taken in the `postgres` database) held while a worker migrates its database.
ROLES_LOCK = 0x1EA27E57


async def _migrate_with_roles(url: str) -> None:
    """Migrate ``url`` and give it the app's login role. Roles are global to the server while IF NOT EXISTS and
    the migrations' advisory lock are not (the lock is per database): parallel workers creating the same role
    on a fresh server would fail with a duplicate key, so one worker at a time does this."""
    lock = await asyncpg.connect(ADMIN_URL)
    try:
        await lock.execute("SELECT pg_advisory_lock($1)", ROLES_LOCK)
        await migrate(url)
        await admin_execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN "
            f"CREATE ROLE {APP_ROLE} LOGIN; END IF; END $$; GRANT learner_app TO {APP_ROLE}", url=url)
    finally:
        await lock.close()  # releases the lock


@pytest.fixture(scope="session")
def admin_database_url() -> Iterator[str]:
    """A fresh, migrated database of this worker's; this URL connects as the superuser (bypasses row-level
    security)."""
    name = f"learner_test_{WORKER or 'main'}_{secrets.token_hex(4)}"
    asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    url = with_database(ADMIN_URL, name)
    try:
        asyncio.run(_migrate_with_roles(url))
        yield url
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", autouse=True)
def _roles_exist(admin_database_url: str) -> None:
    """The server-wide roles (learner_app, learner_stats, the app's login role) exist before any test of this
    worker migrates a database of its own (tests/api/test_migrate.py...), so that those never race to create
    them with another worker."""


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> str:
    """The same database as the app sees it: a role that is subject to row-level security."""
    return with_database(admin_database_url, admin_database_url.rsplit("/", 1)[1], user=APP_ROLE)


@pytest.fixture
async def stream() -> AsyncIterator[str]:
    """A progress stream of this test's own, deleted afterwards."""
    name = f"test:{secrets.token_hex(4)}:progress"
    yield name
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.delete(name, f"{name}:dead")
    finally:
        await client.aclose()


@pytest.fixture
async def tenant(database_url: str) -> str:
    """A tenant of this test's own with the demo content."""
    name = f"t-{secrets.token_hex(4)}"
    await seed(database_url, REDIS_URL, name)
    return name


def settings_for(database_url: str, redis_url: str = REDIS_URL, **extra: object) -> Settings:
    values: dict[str, Any] = {"node_env": "development", "readiness_timeout": 0.5, "jwt_secret": JWT_SECRET,
                              "payment_webhook_secret": WEBHOOK_SECRET,
                              # tests share learner names across tests (and Redis with other runs): limits
                              # are tested on their own tenants (test_limits.py)
                              "rate_limit_per_learner": 1_000_000, "rate_limit_per_tenant": 1_000_000, **extra}
    return Settings(database_url=database_url, redis_url=redis_url, **values)  # type: ignore[arg-type]


def bearer(learner: str, tenant: str = "default", key: str = JWT_SECRET) -> dict[str, str]:
    token = jwt.encode({"sub": learner, "tenant": tenant, "exp": int(time.time()) + 600}, key)
    return {"Authorization": f"Bearer {token}"}


async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://learner-api"
    ) as client:
        yield client


@pytest.fixture
async def client(database_url: str, stream: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(create_app(settings_for(database_url, progress_stream=stream))):
        yield c


def scrape(client: httpx.AsyncClient) -> str:
    """What the metrics port would serve for the app behind ``client`` (not served on the API port)."""
    app = client._transport.app  # type: ignore[attr-defined]
    return generate_latest(app.state.metrics_registry).decode()


def counter(text: str, name: str) -> float:
    """The value of an unlabelled counter in a /metrics exposition."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")
