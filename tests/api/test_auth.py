"""Bearer JWTs: verified every time, the tenant only from the verified claim."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from learner_api.app import create_app
from tests.api.conftest import client_for, settings_for

SECRET = "test-signing-key-with-enough-entropy-0123456789"


def token(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, key, algorithm=algorithm)


@pytest.fixture
async def api(database_url: str) -> httpx.AsyncClient:  # type: ignore[misc]
    async for client in client_for(create_app(settings_for(database_url, jwt_secret=SECRET))):
        yield client


async def test_the_tenant_comes_from_the_verified_claim(api: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {token({'sub': 'learner-1', 'tenant': 'acme'})}",
               "X-Tenant": "someone-else"}  # a header cannot choose the tenant
    response = await api.get("/v1/me", headers=headers)
    assert (response.status_code, response.json()) == (200, {"learner": "learner-1", "tenant": "acme"})


@pytest.mark.parametrize(("make", "status", "detail"), [
    (lambda: None, 401, "Authorization: Bearer"),
    (lambda: token({"sub": "x", "tenant": "acme"}, key="another-key-of-sufficient-length-0123456789"), 401,
     "Signature verification failed"),
    (lambda: jwt.encode({"sub": "x", "tenant": "acme", "exp": int(time.time()) - 120}, SECRET), 401, "expired"),
    (lambda: jwt.encode({"sub": "x", "tenant": "acme"}, SECRET), 401, "exp"),
    (lambda: token({"sub": "x"}), 403, "tenant"),
    (lambda: token({"sub": "x", "tenant": "../../etc"}), 403, "tenant"),
    (lambda: jwt.encode({"sub": "x", "tenant": "acme", "exp": int(time.time()) + 60}, None, algorithm="none"),
     401, "not valid"),
])
async def test_bad_tokens_are_refused_as_problems(api: httpx.AsyncClient, make: object, status: int,
                                                  detail: str) -> None:
    value = make()  # type: ignore[operator]
    headers = {"Authorization": f"Bearer {value}"} if value else {}
    response = await api.get("/v1/me", headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_rs256_with_a_public_key_and_tenancy_off(database_url: str) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    app = create_app(settings_for(database_url, jwt_public_key=public_pem, tenant_mode="disabled"))
    async for client in client_for(app):
        signed = token({"sub": "learner-9", "tenant": "ignored"}, key=private_pem, algorithm="RS256")
        response = await client.get("/v1/me", headers={"Authorization": f"Bearer {signed}"})
        assert response.json() == {"learner": "learner-9", "tenant": "default"}
        forged = hs256_by_hand({"sub": "learner-9", "exp": int(time.time()) + 60}, public_pem.encode())
        assert (await client.get("/v1/me", headers={"Authorization": f"Bearer {forged}"})).status_code == 401


def hs256_by_hand(claims: dict[str, object], key: bytes) -> str:
    """The algorithm-confusion attack: HS256 keyed with the *public* key (PyJWT refuses to make one)."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{part(json.dumps(claims).encode())}"
    return f"{signing_input}.{part(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def run_token(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = str(Path(sys.executable).parent / "learner-api")
    return subprocess.run([command, "token", "learner-7", "--tenant", "acme"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=30)


def test_token_command_is_for_development_only() -> None:
    base = {"DATABASE_URL": "postgresql://postgres@127.0.0.1/dev", "REDIS_URL": "redis://127.0.0.1:6379/0",
            "JWT_SECRET": SECRET}
    minted = run_token({**base, "NODE_ENV": "development"})
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["tenant"]) == ("learner-7", "acme")
    refused = run_token({**base, "NODE_ENV": "production", "DATABASE_URL": base["DATABASE_URL"] + "?sslmode=require",
                         "REDIS_URL": "rediss://cache:6380/0"})
    assert refused.returncode == 2
    assert "development only" in refused.stderr
    assert refused.stdout == ""


async def test_a_remembered_token_does_not_let_a_forged_one_through(api: httpx.AsyncClient) -> None:
    genuine = token({"sub": "learner-1", "tenant": "acme"})
    assert (await api.get("/v1/me", headers={"Authorization": f"Bearer {genuine}"})).status_code == 200
    header, payload, signature = genuine.split(".")
    forged_payload = base64.urlsafe_b64encode(json.dumps(
        {**json.loads(base64.urlsafe_b64decode(payload + "==")), "tenant": "globex"}).encode()).decode().rstrip("=")
    forged = f"{header}.{forged_payload}.{signature}"
    response = await api.get("/v1/me", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    expired = jwt.encode({"sub": "x", "tenant": "acme", "exp": int(time.time()) - 120}, SECRET)
    assert (await api.get("/v1/me", headers={"Authorization": f"Bearer {expired}"})).status_code == 401
