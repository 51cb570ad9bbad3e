"""/livez (the process is alive: no dependency) and /readyz (PostgreSQL and Redis answer, not draining)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from learner_api.problems import Problem

router = APIRouter(tags=["health"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready (problem+json says which dependency)"}})
async def readyz(request: Request) -> dict[str, str]:
    state = request.app.state
    if state.draining:
        raise Problem(503, "shutting down: draining in-flight requests", headers={"Retry-After": "5"})
    timeout = state.settings.readiness_timeout
    failed: list[str] = []

    async def postgres() -> None:
        async with state.pool.acquire(timeout=timeout) as connection:
            await connection.fetchval("SELECT 1", timeout=timeout)

    async def redis() -> None:
        await state.redis.ping()

    for name, check in (("postgresql", postgres), ("redis", redis)):
        try:
            await asyncio.wait_for(check(), timeout=timeout)
        except Exception:  # any failure means not ready; which one is named, the error is not echoed
            failed.append(name)
    if failed:
        raise Problem(503, f"not ready: {', '.join(failed)} did not answer within {timeout:g}s",
                      headers={"Retry-After": "5"}, unavailable=failed)
    return {"status": "ready"}
