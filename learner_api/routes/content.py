"""Course content, read-only: courses (cursor pages), a course's outline, a lesson.

Served from the content cache with a strong ETag (If-None-Match gives 304) and Cache-Control. Whether a
paid lesson may be read is decided here, on every request, from the learner's entitlements, never from
anything cached or sent by the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from learner_api.auth import Identity, IdentityDep
from learner_api.content_cache import ContentCache, Document
from learner_api.cursors import Cursors
from learner_api.data import content
from learner_api.dependencies import DatabaseDep
from learner_api.problems import Problem

router = APIRouter(prefix="/v1", tags=["content"])

Id = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="a course or lesson id")]
PUBLIC = "private, max-age=60"  # behind a bearer token: only the learner's own cache may keep it
PAID = "private, no-cache"  # revalidate every time: the entitlement check must run


class CourseSummary(BaseModel):
    id: str
    title: str
    summary: str
    lessons: int = Field(description="how many lessons the course has")


class CoursePage(BaseModel):
    """The documents are cached as JSON bytes; these models only document their shape."""

    items: list[CourseSummary]
    next_cursor: str | None = Field(description="pass it as ?cursor= for the next page; null on the last")


class LessonOutline(BaseModel):
    id: str
    position: int
    title: str
    paid: bool


class Course(BaseModel):
    id: str
    title: str
    summary: str
    lessons: list[LessonOutline]


class Lesson(BaseModel):
    id: str
    course_id: str
    position: int
    title: str
    body: str
    paid: bool


def _cache(request: Request) -> ContentCache:
    cache: ContentCache = request.app.state.content_cache
    return cache


def _send(request: Request, document: Document, cache_control: str) -> Response:
    headers = {"ETag": document.etag, "Cache-Control": cache_control, "Vary": "Authorization"}
    matches = request.headers.get("if-none-match")
    if matches is not None and (matches.strip() == "*" or document.etag in
                                (tag.strip().removeprefix("W/") for tag in matches.split(","))):
        return Response(status_code=304, headers=headers)
    return Response(document.body, media_type="application/json", headers=headers)


def _admit(request: Request, identity: Identity) -> Callable[[], None]:
    """Counts against the learner's rate limit, called only when the cache missed: a cached read costs
    nothing, an uncached one counts (before PostgreSQL is asked)."""
    return lambda: request.app.state.rate_limiter.check(identity)


@router.get("/courses", summary="List courses, one page at a time (follow next_cursor)")
async def list_courses(request: Request, identity: IdentityDep,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       cursor: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    cursors: Cursors = request.app.state.cursors
    after = cursors.read(identity.tenant, cursor) if cursor is not None else None

    async def load(connection: asyncpg.Connection) -> dict[str, object]:
        items = await content.list_courses(connection, after=after, limit=limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return {"items": items, "next_cursor": cursors.issue(identity.tenant, items[-1]["id"]) if more else None}

    document = await _cache(request).document(identity.tenant, f"courses:{after or ''}:{limit}",
                                              load, admit=_admit(request, identity))
    assert document is not None
    return _send(request, document, PUBLIC)


@router.get("/courses/{course_id}", summary="A course and its lesson outline")
async def get_course(request: Request, identity: IdentityDep, course_id: Id) -> Response:
    document = await _cache(request).document(
        identity.tenant, f"course:{course_id}",
        lambda connection: content.get_course(connection, course_id=course_id), admit=_admit(request, identity))
    if document is None:
        raise Problem(404, f"there is no course '{course_id}'")
    return _send(request, document, PUBLIC)


@router.get("/lessons/{lesson_id}", summary="A lesson (a paid one only with an entitlement to its course)",
            responses={403: {"description": "a paid lesson and no entitlement to its course"}})
async def get_lesson(request: Request, identity: IdentityDep, database: DatabaseDep, lesson_id: Id) -> Response:
    document = await _cache(request).document(
        identity.tenant, f"lesson:{lesson_id}",
        lambda connection: content.get_lesson(connection, lesson_id=lesson_id), admit=_admit(request, identity),
        paid_course=lambda lesson: str(lesson["course_id"]) if lesson["paid"] else None)
    if document is None:
        raise Problem(404, f"there is no lesson '{lesson_id}'")
    if document.paid_course is None:
        return _send(request, document, PUBLIC)
    request.app.state.rate_limiter.check(identity)  # the entitlement is read from PostgreSQL every time
    async with database.tenant(identity.tenant) as connection:
        entitled = await content.is_entitled(connection, learner=identity.learner, course_id=document.paid_course)
    if not entitled:
        raise Problem(403, f"lesson '{lesson_id}' is part of the paid course '{document.paid_course}'; "
                           f"buy it first (GET /v1/products?course_id={document.paid_course})",
                      course_id=document.paid_course)
    return _send(request, document, PAID)
