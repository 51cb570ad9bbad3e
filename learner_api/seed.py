"""`learner-api seed`: demo content (courses, lessons, one paid course, products) for a tenant.

Upserts, so running it again is harmless; it bumps the tenant's content version, which is how a
content change reaches every replica's cache.
"""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from learner_api.content_cache import announce_version
from learner_api.data import content

COURSES = [
    ("python-101", "Python 101", "Variables, functions and files, one small program at a time.", [
        ("python-101-hello", "Hello, Python", "print('hello') and what the interpreter does with it.", False),
        ("python-101-functions", "Functions", "def, arguments, return values, and why small is good.", False),
        ("python-101-files", "Files", "open(), with, and reading a CSV without surprises.", True),
    ]),
    ("sql-basics", "SQL basics", "SELECT, JOIN and GROUP BY against a real database.", [
        ("sql-basics-select", "SELECT", "Columns, rows and WHERE.", False),
        ("sql-basics-join", "JOIN", "Inner and outer joins, drawn and explained.", False),
    ]),
    ("kubernetes-intro", "Kubernetes, an introduction", "Pods, Deployments and Services for developers.", [
        ("kubernetes-intro-pods", "Pods", "The smallest thing Kubernetes runs.", False),
        ("kubernetes-intro-deployments", "Deployments", "Rollouts, rollbacks and replicas.", True),
    ]),
]
PRODUCTS = [
    ("python-101-full", "python-101", "Python 101, all lessons", 1900, "EUR"),
    ("kubernetes-intro-full", "kubernetes-intro", "Kubernetes, an introduction: all lessons", 4900, "EUR"),
]


async def seed(dsn: str, redis_url: str | None, tenant: str = "default", *, statement_cache_size: int = 0) -> int:
    """Load the demo content into ``tenant``; returns the new content version."""
    connection = await asyncpg.connect(dsn, statement_cache_size=statement_cache_size)
    try:
        async with connection.transaction():
            await connection.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            await connection.execute("INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING",
                                     tenant)
            for course_id, title, summary, lessons in COURSES:
                await connection.execute(
                    "INSERT INTO courses (tenant_id, id, title, summary) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (tenant_id, id) DO UPDATE SET title = EXCLUDED.title, summary = EXCLUDED.summary,"
                    " updated_at = now()", tenant, course_id, title, summary)
                await connection.executemany(
                    "INSERT INTO lessons (tenant_id, id, course_id, position, title, body, paid)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, id) DO UPDATE SET"
                    " title = EXCLUDED.title, body = EXCLUDED.body, paid = EXCLUDED.paid, updated_at = now()",
                    [(tenant, lesson_id, course_id, position, lesson_title, body, paid)
                     for position, (lesson_id, lesson_title, body, paid) in enumerate(lessons)])
            await connection.executemany(
                "INSERT INTO products (tenant_id, id, course_id, title, price_cents, currency)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, id) DO UPDATE SET"
                " title = EXCLUDED.title, price_cents = EXCLUDED.price_cents, currency = EXCLUDED.currency",
                [(tenant, *product) for product in PRODUCTS])
            version = await content.bump_content_version(connection, tenant=tenant)
    finally:
        await connection.close()
    if redis_url is not None:
        client = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            await announce_version(client, tenant, version)
        finally:
            await client.aclose()
    return version
