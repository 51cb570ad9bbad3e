"""Enrollments: one row per learner and course, however often the learner asks."""

from __future__ import annotations

from typing import Any

import asyncpg


async def enroll(connection: asyncpg.Connection, *, tenant: str, learner: str, course_id: str) -> bool:
    """True when this call enrolled the learner (a new row); False when they already were."""
    inserted = await connection.fetchval(
        "INSERT INTO enrollments (tenant_id, learner_id, course_id) VALUES ($1, $2, $3)"
        " ON CONFLICT ON CONSTRAINT enrollments_pkey DO NOTHING RETURNING 1", tenant, learner, course_id)
    return inserted is not None


async def list_enrollments(connection: asyncpg.Connection, *, learner: str) -> list[dict[str, Any]]:
    rows = await connection.fetch(
        "SELECT course_id, enrolled_at FROM enrollments WHERE learner_id = $1 ORDER BY enrolled_at, course_id",
        learner)
    return [{"course_id": r["course_id"], "enrolled_at": r["enrolled_at"].isoformat()} for r in rows]
