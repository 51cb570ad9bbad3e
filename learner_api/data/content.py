"""Courses and lessons (read-only for learners); the content version that keys every cache entry."""

from __future__ import annotations

from typing import Any

import asyncpg


async def content_version(connection: asyncpg.Connection, *, tenant: str) -> int:
    version = await connection.fetchval("SELECT content_version FROM tenants WHERE id = $1", tenant)
    return int(version) if version is not None else 0


async def bump_content_version(connection: asyncpg.Connection, *, tenant: str) -> int:
    """Publishing: the new version makes every cached document of the tenant stale."""
    return int(await connection.fetchval(
        "UPDATE tenants SET content_version = content_version + 1 WHERE id = $1 RETURNING content_version", tenant))


async def list_courses(connection: asyncpg.Connection, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Published courses in id order, starting after the cursor (keyset pagination: stable under inserts)."""
    rows = await connection.fetch(
        "SELECT c.id, c.title, c.summary, count(l.id) AS lessons FROM courses c"
        " LEFT JOIN lessons l ON l.tenant_id = c.tenant_id AND l.course_id = c.id"
        " WHERE c.published AND ($1::text IS NULL OR c.id > $1)"
        " GROUP BY c.tenant_id, c.id ORDER BY c.id LIMIT $2",
        after, limit,
    )
    return [dict(row) for row in rows]


async def get_course(connection: asyncpg.Connection, *, course_id: str) -> dict[str, Any] | None:
    course = await connection.fetchrow(
        "SELECT id, title, summary FROM courses WHERE id = $1 AND published", course_id)
    if course is None:
        return None
    lessons = await connection.fetch(
        "SELECT id, position, title, paid FROM lessons WHERE course_id = $1 ORDER BY position", course_id)
    return {**dict(course), "lessons": [dict(lesson) for lesson in lessons]}


async def get_lesson(connection: asyncpg.Connection, *, lesson_id: str) -> dict[str, Any] | None:
    row = await connection.fetchrow(
        "SELECT l.id, l.course_id, l.position, l.title, l.body, l.paid FROM lessons l"
        " JOIN courses c ON c.tenant_id = l.tenant_id AND c.id = l.course_id WHERE l.id = $1 AND c.published",
        lesson_id)
    return dict(row) if row is not None else None


async def is_entitled(connection: asyncpg.Connection, *, learner: str, course_id: str) -> bool:
    """Whether the learner owns any product of the course (checked on every paid-lesson request)."""
    found = await connection.fetchval(
        "SELECT 1 FROM entitlements e JOIN products p ON p.tenant_id = e.tenant_id AND p.id = e.product_id"
        " WHERE e.learner_id = $1 AND p.course_id = $2 LIMIT 1", learner, course_id)
    return found is not None


async def course_exists(connection: asyncpg.Connection, *, course_id: str) -> bool:
    return await connection.fetchval("SELECT 1 FROM courses WHERE id = $1 AND published", course_id) is not None
