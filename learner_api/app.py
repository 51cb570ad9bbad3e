"""The FastAPI application: pools and clients are made in the lifespan, from Settings given at start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from learner_api import __version__, api_docs, metrics, openapi, problems
from learner_api.auth import VerifiedTokens
from learner_api.content_cache import ContentCache, lookups_counter
from learner_api.cursors import Cursors
from learner_api.dependencies import POSTGRES_DOWN, Database, RedisGuard
from learner_api.edge import Edge
from learner_api.faults import FaultMiddleware
from learner_api.progress_intake import ProgressIntake
from learner_api.rate_limit import RateLimiter
from learner_api.redis_client import connect_redis, progress_streams
from learner_api.routes import content, enrollments, health, me, payments, progress, store
from learner_api.settings import ConfigError, Settings

logger = logging.getLogger("learner_api")


async def connect_postgres(settings: Settings, attempts: int = 5, *, role: str = "learner-api") -> asyncpg.Pool:
    """The managed database may be waking up (Neon scales to zero): retry with backoff, then give up loudly.
    Its sessions carry ``role/pod`` as their application_name: who is connected, in pg_stat_activity."""
    name = f"{role}/{settings.pod_name}" if settings.pod_name else role
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await asyncpg.create_pool(
                settings.database_url.get_secret_value(), min_size=0, max_size=settings.database_pool_max,
                statement_cache_size=settings.database_statement_cache_size, timeout=5,
                # the client stops waiting a moment after the server-side statement_timeout would have fired
                command_timeout=settings.database_statement_timeout_seconds + 1,
                server_settings={"application_name": name[:63]},
            )
        except (OSError, asyncpg.PostgresError) as exc:
            if attempt == attempts:
                raise
            logger.warning("PostgreSQL not reachable (%s, attempt %d/%d); retrying in %.1fs",
                           type(exc).__name__, attempt, attempts, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8)
    raise AssertionError("unreachable")


async def check_role(pool: asyncpg.Pool, settings: Settings) -> None:
    """Row-level security does not apply to superusers or BYPASSRLS roles: refuse to serve as one
    outside development. (Skipped, not failed, while PostgreSQL is down: /readyz reports that.)"""
    try:
        async with pool.acquire(timeout=settings.readiness_timeout * 2) as connection:
            role = await connection.fetchrow(
                "SELECT rolname, rolsuper OR rolbypassrls AS bypass FROM pg_roles WHERE rolname = current_user")
    except POSTGRES_DOWN:
        logger.warning("PostgreSQL not reachable at start; tenant isolation checks run when it is")
        return
    if role is not None and role["bypass"]:
        message = (f"DATABASE_URL connects as '{role['rolname']}', a superuser or BYPASSRLS role: tenant "
                   "isolation (row-level security) would not apply. Connect as a member of learner_app.")
        if not settings.development:
            raise ConfigError(message)
        logger.warning("%s (allowed with NODE_ENV=development)", message)


DESCRIPTION = (
    "Course content, progress, enrollments and the store for learners. Every error is RFC 9457 "
    "application/problem+json. Any request may also be answered, before it reaches an operation: 408 (the "
    "headers or body did not arrive in time), 431 (request line and headers over 16 KiB, or over 100 "
    "headers), 413 (a body over the operation's limit), 503 with Retry-After (the server is at its "
    "connection limit, or the request passed its deadline).")


def create_app(settings: Settings) -> FastAPI:
    registry = CollectorRegistry()
    cache_lookups = lookups_counter(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await connect_postgres(settings)
        client = connect_redis(settings, socket_timeout=settings.redis_timeout_seconds,
                               socket_connect_timeout=settings.redis_timeout_seconds)
        try:
            await check_role(pool, settings)
            app.state.pool, app.state.redis = pool, client
            app.state.database = Database(pool, timeout=settings.readiness_timeout * 2,
                                          statement_timeout=settings.database_statement_timeout_seconds)
            app.state.redis_guard = RedisGuard(client)
            app.state.rate_limiter = RateLimiter(app.state.redis_guard, per_learner=settings.rate_limit_per_learner,
                                                 per_tenant=settings.rate_limit_per_tenant,
                                                 window=settings.rate_limit_window_seconds)
            app.state.content_cache = ContentCache(
                app.state.database, app.state.redis_guard, cache_lookups, ttl=settings.content_cache_seconds,
                version_ttl=settings.content_version_seconds)
            app.state.progress_intake = ProgressIntake(client, progress_streams(settings),
                                                       ttl=settings.progress_dedupe_seconds)
            yield
        finally:
            app.state.draining = True
            if hasattr(app.state, "rate_limiter"):
                await app.state.rate_limiter.close()
            await client.aclose()
            await pool.close()

    app = FastAPI(title="learner-api", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=DESCRIPTION)
    app.state.settings = settings
    app.state.verified_tokens = VerifiedTokens(settings)
    app.state.draining = False
    app.state.business = metrics.BusinessMetrics(registry)
    app.state.metrics_registry = registry  # served on METRICS_PORT (metrics.metrics_app), not here
    app.state.cursors = Cursors(settings.database_url.get_secret_value())
    problems.install(app)
    openapi.install(app)
    if settings.test_fault_5xx_ratio or settings.test_fault_latency_ms:  # development only (settings)
        app.add_middleware(FaultMiddleware, error_ratio=settings.test_fault_5xx_ratio,
                           latency_ms=settings.test_fault_latency_ms)
    app.add_middleware(Edge, state=app.state, deadline=settings.request_deadline_seconds)
    metrics.install(app, metrics.HttpMetrics(registry))  # outermost: it sees what the edge refuses too
    for module in (health, me, content, progress, enrollments, store, payments):
        app.include_router(module.router)
    api_docs.install(app)
    return app
