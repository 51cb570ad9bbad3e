"""Hostile and broken inputs are refused at the edge with a problem+json 4xx, never a 500, and never
accepted when the platform could not store them later."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from learner_api.redis_keys import tenant_key
from learner_api.webhook_signature import sign
from tests.api.conftest import JWT_SECRET, REDIS_URL, WEBHOOK_SECRET, bearer, scrape


def with_sub(sub: object, tenant: object = "acme") -> dict[str, str]:
    claims = {"sub": sub, "tenant": tenant, "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET)}"}


def lone_surrogate_token() -> dict[str, str]:
    """json.dumps writes a lone surrogate as the escape \\ud800, which any JSON parser reads back."""
    return with_sub("ada\ud800")


@pytest.mark.parametrize("headers", [with_sub("x" * 4000), with_sub("ada\x00"), lone_surrogate_token(),
                                     with_sub("two words"), with_sub("")], ids=["4000", "nul", "surrogate",
                                                                               "space", "empty"])
async def test_a_learner_id_the_platform_cannot_store_is_401(client: httpx.AsyncClient, headers: dict[str, str]
                                                             ) -> None:
    for method, path, body in [("POST", "/v1/enrollments", {"course_id": "sql-basics"}),
                               ("POST", "/v1/checkout", {"product_id": "python-101-full"}),
                               ("GET", "/v1/entitlements", None), ("GET", "/v1/me", None)]:
        response = await client.request(method, path, json=body, headers={**headers, "Idempotency-Key": "k"})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert "sub" in response.json()["detail"]


@pytest.mark.parametrize("tenant", ["acme\n", "acme ", "ACME", "a" * 64, "acme\x00"])
async def test_a_tenant_claim_must_match_exactly(client: httpx.AsyncClient, tenant: str) -> None:
    response = await client.get("/v1/me", headers=with_sub("ada", tenant))
    assert response.status_code == 403
    assert "tenant" in response.json()["detail"]


@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:00:00+14:00", "1999-12-31T23:59:59Z",
                                         "9999-12-31T23:59:59-14:00"])
async def test_an_event_time_outside_a_sane_window_is_422(client: httpx.AsyncClient, stream: str,
                                                          occurred_at: str) -> None:
    body = {"events": [{"id": str(uuid.uuid4()), "verb": "lesson_viewed", "lesson_id": "python-101-hello",
                        "occurred_at": occurred_at}]}
    response = await client.post("/v1/progress", json=body, headers=bearer("ada", "acme"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    recent = (datetime.now(UTC) - timedelta(days=300)).isoformat()
    body["events"][0]["occurred_at"] = recent  # type: ignore[index]
    assert (await client.post("/v1/progress", json=body, headers=bearer("ada", "acme"))).status_code == 202


async def test_only_cursors_the_api_issued_are_accepted_and_cached(client: httpx.AsyncClient, tenant: str) -> None:
    headers = bearer("ada", tenant)
    page = (await client.get("/v1/courses", params={"limit": 1}, headers=headers)).json()
    cursor = page["next_cursor"]
    assert (await client.get("/v1/courses", params={"cursor": cursor}, headers=headers)).status_code == 200
    redis = aioredis.from_url(REDIS_URL)
    try:
        # content keys (t:<tenant>:v<version>:...), not the rate counters
        keys_before = len([k async for k in redis.scan_iter(tenant_key(tenant, "v*"), count=10_000)])
        assert keys_before > 0  # the issued cursor's page is cached: the pattern finds the tenant's keys
        last_id, _, mac = cursor.partition(".")
        forged = [cursor[:-1] + ("A" if cursor[-1] != "A" else "B"), last_id, "AA", "x" * 200,
                  last_id + "." + mac + "=", "YWJj.AAAAAAAAAAAAAAAA"]
        for made_up in forged:
            response = await client.get("/v1/courses", params={"cursor": made_up}, headers=headers)
            assert response.status_code in (400, 422), (made_up, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        for raw in ("%00", "%ED%A0%80", "%FF", "AA%00.AA"):  # NUL, a lone surrogate's bytes, not UTF-8
            response = await client.get(f"/v1/courses?cursor={raw}", headers=headers)
            assert response.status_code in (400, 422), (raw, response.text)
        other_tenant = await client.get("/v1/courses", params={"cursor": cursor}, headers=bearer("ada", "acme"))
        assert other_tenant.status_code == 400  # a cursor is the tenant's own
        assert len([k async for k in redis.scan_iter(tenant_key(tenant, "v*"), count=10_000)]) == keys_before
    finally:
        await redis.aclose()


async def test_a_signed_webhook_with_an_unstorable_event_id_is_422(client: httpx.AsyncClient, tenant: str) -> None:
    for event_id in ("evt\x00nul", "evt\ud800", "x" * 300, ""):
        body = json.dumps({"id": event_id, "type": "payment.succeeded",
                           "data": {"tenant": tenant, "order_id": str(uuid.uuid4()), "amount_cents": 1900,
                                    "currency": "EUR"}}).encode()
        response = await client.post("/v1/webhooks/payments", content=body,
                                     headers={"Payment-Signature": sign(WEBHOOK_SECRET, body),
                                              "Content-Type": "application/json"})
        assert response.status_code == 422, (event_id, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_bodies_are_bounded_per_route_and_authenticated_first(client: httpx.AsyncClient) -> None:
    big = b'{"course_id": "' + b"a" * 5000 + b'"}'
    anonymous = await client.post("/v1/enrollments", content=big, headers={"Content-Type": "application/json"})
    assert (anonymous.status_code, anonymous.headers["connection"]) == (413, "close")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies as it arrives
        for _ in range(10):
            yield b" " * 1024

    streamed = await client.post("/v1/checkout", content=chunks(), headers=bearer("ada", "acme"))
    assert streamed.status_code == 413
    unauthenticated = await client.post("/v1/checkout", content=chunks())
    assert unauthenticated.status_code == 401
    unsigned = await client.post("/v1/webhooks/payments", content=b"{}")
    assert unsigned.status_code == 400
    assert "Payment-Signature" in unsigned.json()["detail"]
    elsewhere = await client.post("/v1/me", content=b" " * 5000)
    assert elsewhere.status_code == 413


async def test_a_client_hanging_up_mid_body_is_not_a_server_error(client: httpx.AsyncClient,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    messages = [{"type": "http.request", "body": b'{"id": "evt', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        await asyncio.sleep(0)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "path": "/v1/webhooks/payments", "raw_path": b"/v1/webhooks/payments", "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("api", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"payment-signature", sign(WEBHOOK_SECRET, b"{}").encode()),
                         (b"content-type", b"application/json")]}
    with caplog.at_level(logging.INFO):
        await app(scope, receive, send)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sent == []  # nobody to answer
    metrics = scrape(client)
    assert 'route="unmatched",status="4xx"' in metrics
    assert 'status="5xx"' not in metrics
