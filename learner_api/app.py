"""The FastAPI application: pools and clients are made in the lifespan, from Settings given at start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from learner_api import __version__, metrics, problems
from learner_api.routes import health, me
from learner_api.settings import Settings

logger = logging.getLogger("learner_api")


async def _connect_postgres(settings: Settings, attempts: int = 5) -> asyncpg.Pool:
    """The managed database may be waking up (Neon scales to zero): retry with backoff, then give up loudly."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await asyncpg.create_pool(
                settings.database_url.get_secret_value(), min_size=0, max_size=settings.database_pool_max,
                statement_cache_size=settings.database_statement_cache_size, timeout=5,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            if attempt == attempts:
                raise
            logger.warning("PostgreSQL not reachable (%s, attempt %d/%d); retrying in %.1fs",
                           type(exc).__name__, attempt, attempts, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8)
    raise AssertionError("unreachable")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await _connect_postgres(settings)
        app.state.redis = aioredis.from_url(settings.redis_url.get_secret_value(),
                                            socket_timeout=settings.readiness_timeout * 2,
                                            socket_connect_timeout=settings.readiness_timeout * 2)
        try:
            yield
        finally:
            app.state.draining = True
            await app.state.redis.aclose()
            await app.state.pool.close()

    app = FastAPI(title="learner-api", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.draining = False
    problems.install(app)
    metrics.install(app, metrics.HttpMetrics(CollectorRegistry()))
    app.include_router(health.router)
    app.include_router(me.router)
    return app
