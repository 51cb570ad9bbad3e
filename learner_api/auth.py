"""Who is calling: a bearer JWT from the platform's identity provider, verified on every request.

`sub` is the learner. With TENANT_MODE=enabled the tenant comes from the verified `tenant` claim and
nowhere else (not a header, not the path); with tenancy off everyone is in the `default` tenant.
HS256 with JWT_SECRET, or RS256/ES256 with JWT_PUBLIC_KEY; `exp` is required, 30 s of clock leeway.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from learner_api.problems import Problem
from learner_api.settings import Settings

TENANT_CLAIM = "tenant"
_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="learner-api"'}


@dataclass(frozen=True)
class Identity:
    learner: str
    tenant: str


def _key(settings: Settings) -> tuple[Any, list[str]]:
    if settings.jwt_public_key is not None:
        return settings.jwt_public_key.get_secret_value(), ["RS256", "ES256"]
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value(), ["HS256"]
    raise Problem(503, "authentication is not configured: set JWT_SECRET or JWT_PUBLIC_KEY")


def verify(token: str, settings: Settings) -> Identity:
    key, algorithms = _key(settings)
    try:
        claims = jwt.decode(token, key, algorithms=algorithms, leeway=30, options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Problem(401, "the token has expired; sign in again", headers=_CHALLENGE) from None
    except jwt.InvalidTokenError as exc:
        raise Problem(401, f"the token is not valid: {exc}", headers=_CHALLENGE) from None
    if settings.tenant_mode == "disabled":
        return Identity(learner=str(claims["sub"]), tenant="default")
    tenant = claims.get(TENANT_CLAIM)
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise Problem(403, f"the token carries no valid '{TENANT_CLAIM}' claim (TENANT_MODE is enabled)")
    return Identity(learner=str(claims["sub"]), tenant=tenant)


def current_identity(request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(401, "send 'Authorization: Bearer <token>'", headers=_CHALLENGE)
    settings: Settings = request.app.state.settings
    return verify(token.strip(), settings)


IdentityDep = Annotated[Identity, Depends(current_identity)]


def mint(settings: Settings, learner: str, tenant: str = "default", ttl: int = 3600) -> str:
    """A token for local use only (`learner-api token`): refused outside development."""
    if not settings.development:
        raise PermissionError("minting tokens is for development only (NODE_ENV=development)")
    if settings.jwt_secret is None:
        raise PermissionError("set JWT_SECRET to mint development tokens")
    now = int(time.time())
    return jwt.encode({"sub": learner, TENANT_CLAIM: tenant, "iat": now, "exp": now + ttl},
                      settings.jwt_secret.get_secret_value(), algorithm="HS256")
