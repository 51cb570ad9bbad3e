"""Enrollments: POST is idempotent per learner and course (201 the first time, 200 after)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from learner_api.auth import IdentityDep
from learner_api.data import content, enrollments
from learner_api.dependencies import DatabaseDep
from learner_api.problems import Problem
from learner_api.rate_limit import CostlyIdentityDep

router = APIRouter(prefix="/v1", tags=["enrollments"])


class EnrollmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    course_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


@router.post("/enrollments", status_code=201, summary="Enroll in a course (again is fine: 200)",
             responses={200: {"description": "already enrolled; nothing changed"}})
async def enroll(request: Request, body: EnrollmentRequest, identity: IdentityDep,
                 database: DatabaseDep) -> JSONResponse:
    async with database.tenant(identity.tenant) as connection:
        if not await content.course_exists(connection, course_id=body.course_id):
            raise Problem(404, f"there is no course '{body.course_id}'")
        created = await enrollments.enroll(connection, tenant=identity.tenant, learner=identity.learner,
                                           course_id=body.course_id)
    if created:  # after the commit: a rolled-back row is not an enrollment
        request.app.state.business.enrollments.inc()
    return JSONResponse({"course_id": body.course_id, "enrolled": True}, status_code=201 if created else 200)


@router.get("/enrollments", summary="The courses I am enrolled in")
async def my_enrollments(identity: CostlyIdentityDep, database: DatabaseDep) -> dict[str, list[dict[str, Any]]]:
    async with database.tenant(identity.tenant) as connection:
        return {"items": await enrollments.list_enrollments(connection, learner=identity.learner)}
