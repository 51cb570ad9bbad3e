"""Every error is RFC 9457 application/problem+json, with a detail a client can act on."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger("learner_api")


class Problem(Exception):
    def __init__(self, status: int, detail: str, *, type_: str = "about:blank", title: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.type, self.headers, self.extra = status, detail, type_, headers or {}, extra
        self.title = title or HTTPStatus(status).phrase


def problem_response(problem: Problem, instance: str) -> JSONResponse:
    body = {"type": problem.type, "title": problem.title, "status": problem.status, "detail": problem.detail,
            "instance": instance, **problem.extra}
    return JSONResponse(body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no resource at {request.url.path}; see /docs for the API"
        return problem_response(Problem(exc.status_code, detail, headers=dict(exc.headers or {})), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        return problem_response(Problem(422, detail, errors=errors), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, (request.scope.get("route") and
                     getattr(request.scope["route"], "path", "")) or "unmatched", exc_info=exc)
        return problem_response(Problem(500, "an unexpected error; it has been logged"), request.url.path)
