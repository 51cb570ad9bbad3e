"""The external services as the routes see them: pools from the lifespan, and a clear 503 when one is down.

A managed PostgreSQL or Redis that is down must not hang requests or crash the process: calls fail fast
(short timeouts; a Redis that just failed is skipped for a moment) and surface as problem+json 503 with
Retry-After, naming the dependency but never its address.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, Request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from learner_api.problems import Problem

#: What "PostgreSQL is unavailable" looks like from asyncpg (refused, reset, timed out, shutting down; and a
#: pooled connection whose session the server ended after the pool had checked it: its protocol is left half
#: way, "InternalClientError: cannot switch to state ..." (MagicStack/asyncpg#784), and must not be reused).
POSTGRES_DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                 asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.InternalClientError)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def unavailable(name: str, retry_after: int = 5) -> Problem:
    return Problem(503, f"{name} is unavailable; try again shortly", headers={"Retry-After": str(retry_after)},
                   unavailable=[name])


class Database:
    """The pool plus two rules: every transaction runs as one tenant (row-level security's key), and no
    transaction can wait on PostgreSQL for longer than its budget (a frozen server is a 503, not a hang)."""

    def __init__(self, pool: asyncpg.Pool, timeout: float, *, statement_timeout: float | None = None) -> None:
        self.pool = pool
        self.timeout = timeout  # acquiring a connection; giving it back
        self.statement_timeout_ms = str(int(statement_timeout * 1000)) if statement_timeout else None

    @asynccontextmanager
    async def tenant(self, tenant: str) -> AsyncIterator[asyncpg.Connection]:
        """A transaction in which PostgreSQL's policies only show and accept ``tenant``'s rows.

        ``set_config(..., true)`` is transaction-local, so a pooled connection (or PgBouncer in
        transaction mode) never carries one tenant's setting (or statement timeout) into another's request.
        No ROLLBACK on failure: the pool's reset rolls back, under the release timeout, which ends a
        connection that cannot answer instead of waiting for it (a rollback would wait as long again).
        """
        try:
            connection = await self.pool.acquire(timeout=self.timeout)
        except POSTGRES_DOWN:
            raise unavailable("postgresql") from None
        try:
            await connection.execute("BEGIN")
            if self.statement_timeout_ms is None:
                await connection.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            else:  # the server-side timeout too: the client's command_timeout only stops waiting
                await connection.execute("SELECT set_config('app.tenant_id', $1, true),"
                                         " set_config('statement_timeout', $2, true)",
                                         tenant, self.statement_timeout_ms)
            yield connection
            await connection.execute("COMMIT")
        except POSTGRES_DOWN as exc:
            if isinstance(exc, asyncpg.InternalClientError):
                connection.terminate()  # the pool makes a new one
            raise unavailable("postgresql") from None
        finally:
            with contextlib.suppress(*POSTGRES_DOWN):  # asyncpg ended the connection; the error above says why
                await self.pool.release(connection, timeout=self.timeout)


class RedisGuard:
    """Redis with a short memory of failure: after an error, skip it for ``cooldown`` seconds instead of
    making every request wait for a timeout against a server that is down."""

    def __init__(self, client: aioredis.Redis, cooldown: float = 2.0) -> None:
        self.client = client
        self.cooldown = cooldown
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self) -> None:
        self._down_until = time.monotonic() + self.cooldown


# async dependencies: FastAPI would run sync ones in a thread pool, a hop per request for nothing.
async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_redis(request: Request) -> RedisGuard:
    guard: RedisGuard = request.app.state.redis_guard
    return guard


DatabaseDep = Annotated[Database, Depends(get_database)]
RedisDep = Annotated[RedisGuard, Depends(get_redis)]
