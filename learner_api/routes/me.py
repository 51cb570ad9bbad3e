"""The caller as the API sees them: a check that a token works (and which tenant it acts in)."""

from __future__ import annotations

from fastapi import APIRouter

from learner_api.auth import IdentityDep

router = APIRouter(prefix="/v1", tags=["identity"])


@router.get("/me")
async def me(identity: IdentityDep) -> dict[str, str]:
    return {"learner": identity.learner, "tenant": identity.tenant}
