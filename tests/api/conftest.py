"""Real PostgreSQL and Redis (scripts/test makes sure they answer): a throwaway database per session."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from learner_api.app import create_app
from learner_api.settings import Settings

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: A port nothing listens on, for "the dependency is down".
DEAD_PORT = 1


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    import asyncio

    name = f"learner_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(ADMIN_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def settings_for(database_url: str, redis_url: str = REDIS_URL, **extra: object) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, node_env="development",  # type: ignore[arg-type]
                    readiness_timeout=0.5, **extra)


async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://learner-api"
    ) as client:
        yield client


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(create_app(settings_for(database_url))):
        yield c
