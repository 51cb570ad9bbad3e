"""Read-through cache for content: in-process LRU, then Redis, then PostgreSQL.

Every entry's key carries the tenant's content version, so publishing content (which bumps the version)
invalidates everything at once without deleting a key; replicas notice a new version within
``version_ttl`` seconds. A hot lesson costs no network round trip at all, which is what lets a cached
GET keep up with a constant route. When PostgreSQL is down, whatever is cached is still served; when
Redis is down, content comes from PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from learner_api.data import content
from learner_api.dependencies import REDIS_DOWN, Database, RedisGuard
from learner_api.problems import Problem
from learner_api.redis_keys import tenant_key

logger = logging.getLogger(__name__)

Loader = Callable[[asyncpg.Connection], Awaitable[dict[str, Any] | None]]


def lookups_counter(registry: CollectorRegistry) -> Counter:
    counter = Counter("content_cache_lookups_total", "Content lookups by the layer that answered.", ["layer"],
                      registry=registry)
    for layer in ("local", "redis", "database"):
        counter.labels(layer)
    return counter


def version_key(tenant: str) -> str:
    return tenant_key(tenant, "content-version")


def document_key(tenant: str, version: int, name: str) -> str:
    return tenant_key(tenant, f"v{version}:{name}")


@dataclass(frozen=True)
class Document:
    """A response body ready to send, its ETag, and (for a paid lesson) the course it belongs to."""

    body: bytes
    etag: str
    paid_course: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any], paid_course: str | None = None) -> Document:
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(body, '"' + hashlib.sha256(body).hexdigest()[:24] + '"', paid_course)

    def dumps(self) -> bytes:
        return json.dumps([self.etag, self.paid_course]).encode() + b"\n" + self.body

    @classmethod
    def loads(cls, raw: bytes) -> Document:
        meta, _, body = raw.partition(b"\n")
        etag, paid_course = json.loads(meta)
        return cls(body, etag, paid_course)


class ContentCache:
    def __init__(self, database: Database, redis: RedisGuard, lookups: Counter, *, ttl: int = 3600,
                 version_ttl: float = 1.0, local_entries: int = 5000) -> None:
        self.database, self.redis = database, redis
        self.ttl, self.version_ttl, self.local_entries = ttl, version_ttl, local_entries
        self._versions: dict[str, tuple[int, float]] = {}
        self._local: OrderedDict[str, Document] = OrderedDict()
        self.lookups = lookups

    async def version(self, tenant: str) -> int:
        known = self._versions.get(tenant)
        now = time.monotonic()
        if known is not None and now - known[1] < self.version_ttl:
            return known[0]
        version: int | None = None
        if self.redis.available:
            try:
                raw = await self.redis.client.get(version_key(tenant))
                version = int(raw) if raw is not None else None
            except REDIS_DOWN:
                self.redis.failed()
        if version is None:
            try:
                async with self.database.tenant(tenant) as connection:
                    version = await content.content_version(connection, tenant=tenant)
            except Problem:
                if known is not None:  # both stores unreachable: keep serving what we know
                    return known[0]
                raise
            await self._redis_set(version_key(tenant), str(version).encode(), ex=300, nx=True)
        self._versions[tenant] = (version, now)
        return version

    async def document(self, tenant: str, name: str, loader: Loader,
                       paid_course: Callable[[dict[str, Any]], str | None] = lambda _: None,
                       admit: Callable[[], None] | None = None) -> Document | None:
        """The cached document ``name`` (say ``lesson:intro``) of the tenant's current content, loading it
        with ``loader`` on a miss; None when it does not exist. ``admit`` runs before PostgreSQL is asked
        (a rate limit that may refuse the miss)."""
        key = document_key(tenant, await self.version(tenant), name)
        document = self._local.get(key)
        if document is not None:
            self._local.move_to_end(key)
            self.lookups.labels("local").inc()
            return document
        if self.redis.available:
            try:
                raw = await self.redis.client.get(key)
            except REDIS_DOWN:
                self.redis.failed()
                raw = None
            if raw is not None:
                document = Document.loads(raw if isinstance(raw, bytes) else raw.encode())
                self._remember(key, document)
                self.lookups.labels("redis").inc()
                return document
        if admit is not None:
            admit()
        async with self.database.tenant(tenant) as connection:
            data = await loader(connection)
        self.lookups.labels("database").inc()
        if data is None:
            return None
        document = Document.of(data, paid_course(data))
        await self._redis_set(key, document.dumps(), ex=self.ttl)
        self._remember(key, document)
        return document

    def _remember(self, key: str, document: Document) -> None:
        self._local[key] = document
        if len(self._local) > self.local_entries:
            self._local.popitem(last=False)

    async def _redis_set(self, key: str, value: bytes, *, ex: int, nx: bool = False) -> None:
        if not self.redis.available:
            return
        try:
            await self.redis.client.set(key, value, ex=ex, nx=nx)
        except REDIS_DOWN:
            self.redis.failed()


async def announce_version(client: aioredis.Redis, tenant: str, version: int) -> None:
    """Tell every replica about a new content version (they read it within a second)."""
    try:
        await client.set(version_key(tenant), str(version).encode(), ex=300)
    except REDIS_DOWN:
        logger.warning("Redis unavailable: replicas pick up content version %d when its key expires", version)


async def bump_version(database: Database, redis: RedisGuard, tenant: str) -> int:
    """Publish: every cached document of the tenant is stale from now on."""
    async with database.tenant(tenant) as connection:
        version = await content.bump_content_version(connection, tenant=tenant)
    await announce_version(redis.client, tenant, version)
    return version
