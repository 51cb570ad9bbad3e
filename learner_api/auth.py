"""Who is calling: a bearer JWT from the platform's identity provider, verified on every request.

`sub` is the learner. With TENANT_MODE=enabled the tenant comes from the verified `tenant` claim and
nowhere else (not a header, not the path); with tenancy off everyone is in the `default` tenant.
HS256 with JWT_SECRET, or RS256/ES256 with JWT_PUBLIC_KEY; `exp` is required, 30 s of clock leeway.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from learner_api.problems import Problem
from learner_api.settings import Settings

TENANT_CLAIM = "tenant"
#: Matched with fullmatch: a "$" would also match before a final newline ("acme\n" a tenant of its own).
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: Learner ids (the token's sub) as they are stored and used in keys: printable ASCII, no spaces, at most
#: 255 characters (OpenID Connect's own limit), so no sub can make a row or index entry too large.
_LEARNER_RE = re.compile(r"[\x21-\x7e]{1,255}")
#: Tokens longer than this are verified every time instead of remembered (the memory stays bounded).
_REMEMBERED_TOKEN_CHARS = 4096
#: Where the edge leaves the identity it verified before reading a body (see learner_api.edge).
IDENTITY = "learner_api.identity"
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
    learner = claims["sub"]
    if not isinstance(learner, str) or not _LEARNER_RE.fullmatch(learner):
        raise Problem(401, "the token's 'sub' claim is not a learner id this API accepts (1-255 printable "
                           "ASCII characters, no spaces)", headers=_CHALLENGE)
    if settings.tenant_mode == "disabled":
        return Identity(learner=learner, tenant="default")
    tenant = claims.get(TENANT_CLAIM)
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise Problem(403, f"the token carries no valid '{TENANT_CLAIM}' claim (TENANT_MODE is enabled)")
    return Identity(learner=learner, tenant=tenant)


class VerifiedTokens:
    """Tokens already verified, until they expire: a learner's app sends the same token on every call,
    and checking its signature again costs more than the rest of a cached lesson GET. Bounded (LRU)."""

    def __init__(self, settings: Settings, size: int = 10_000) -> None:
        self.settings, self.size = settings, size
        self._known: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    def identity(self, token: str) -> Identity:
        known = self._known.get(token)
        if known is not None and time.time() < known[1]:
            self._known.move_to_end(token)
            return known[0]
        identity = verify(token, self.settings)  # raises for anything not (or no longer) valid
        if len(token) > _REMEMBERED_TOKEN_CHARS:
            return identity
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        self._known[token] = (identity, float(expires))
        if len(self._known) > self.size:
            self._known.popitem(last=False)
        return identity


def identity_from_header(tokens: VerifiedTokens, header: str) -> Identity:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "send 'Authorization: Bearer <token>'", headers=_CHALLENGE)
    return tokens.identity(token.strip())


async def current_identity(request: Request) -> Identity:
    """async on purpose: FastAPI runs a sync dependency in a thread, a hop that costs more than the work.
    Routes with a body were authenticated by the edge already, before the body was read."""
    known: Identity | None = request.scope.get(IDENTITY)
    if known is not None:
        return known
    return identity_from_header(request.app.state.verified_tokens, request.headers.get("authorization", ""))


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
