"""The store against real PostgreSQL: catalog prices, Idempotency-Key under a race, signed webhooks,
one grant per purchase, and the business counters."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import asyncpg
import httpx

from learner_api.data.progress import prune_bookkeeping
from learner_api.webhook_signature import sign
from tests.api.conftest import WEBHOOK_SECRET, admin_execute, bearer, counter, scrape


async def checkout(client: httpx.AsyncClient, tenant: str, key: str, product: str = "python-101-full",
                   learner: str = "ada") -> httpx.Response:
    return await client.post("/v1/checkout", json={"product_id": product},
                             headers={**bearer(learner, tenant), "Idempotency-Key": key})


def payment(tenant: str, order: dict[str, object], event_id: str | None = None,
            type_: str = "payment.succeeded") -> bytes:
    return json.dumps({"id": event_id or f"evt_{uuid.uuid4().hex}", "type": type_,
                       "data": {"tenant": tenant, "order_id": order["id"], "amount_cents": order["amount_cents"],
                                "currency": order["currency"]}}).encode()


async def deliver(client: httpx.AsyncClient, body: bytes, signature: str | None = None) -> httpx.Response:
    return await client.post("/v1/webhooks/payments", content=body, headers={
        "Payment-Signature": signature or sign(WEBHOOK_SECRET, body), "Content-Type": "application/json"})


async def orders_of(admin_database_url: str, tenant: str) -> int:
    connection = await asyncpg.connect(admin_database_url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM orders WHERE tenant_id = $1", tenant))
    finally:
        await connection.close()


async def test_prices_come_from_the_catalog_only(client: httpx.AsyncClient, tenant: str) -> None:
    products = (await client.get("/v1/products", params={"course_id": "python-101"},
                                 headers=bearer("ada", tenant))).json()["items"]
    assert products == [{"id": "python-101-full", "course_id": "python-101", "title": "Python 101, all lessons",
                         "price_cents": 1900, "currency": "EUR"}]
    cheap = await client.post("/v1/checkout", json={"product_id": "python-101-full", "price_cents": 1},
                              headers={**bearer("ada", tenant), "Idempotency-Key": "k1"})
    assert cheap.status_code == 422
    assert "price_cents" in cheap.json()["detail"]
    order = (await checkout(client, tenant, "k2")).json()["order"]
    assert (order["amount_cents"], order["currency"], order["status"]) == (1900, "EUR", "pending")


async def test_fifty_concurrent_checkouts_with_one_key_make_one_order(client: httpx.AsyncClient, tenant: str,
                                                                      admin_database_url: str) -> None:
    responses = await asyncio.gather(*(checkout(client, tenant, "same-key") for _ in range(50)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}
    assert statuses.count(201) >= 1
    assert await orders_of(admin_database_url, tenant) == 1
    orders = {r.json()["order"]["id"] for r in responses if r.status_code == 201}
    assert len(orders) == 1
    conflict = next((r for r in responses if r.status_code == 409), None)
    if conflict is not None:
        assert conflict.headers["retry-after"] == "1"
        assert "still being processed" in conflict.json()["detail"]
    replay = await checkout(client, tenant, "same-key")
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert replay.json()["order"]["id"] in orders
    assert await orders_of(admin_database_url, tenant) == 1


async def test_one_key_for_another_body_is_422_and_no_key_is_400(client: httpx.AsyncClient, tenant: str,
                                                                 admin_database_url: str) -> None:
    assert (await checkout(client, tenant, "k")).status_code == 201
    other = await checkout(client, tenant, "k", product="kubernetes-intro-full")
    assert other.status_code == 422
    assert "different request" in other.json()["detail"]
    missing = await client.post("/v1/checkout", json={"product_id": "python-101-full"}, headers=bearer("ada", tenant))
    assert missing.status_code == 400
    assert "Idempotency-Key" in missing.json()["detail"]
    unknown = await checkout(client, tenant, "k-unknown", product="no-such-product")
    assert unknown.status_code == 404
    assert await orders_of(admin_database_url, tenant) == 1
    # a failed request released its key: the same key works once the request is right
    assert (await checkout(client, tenant, "k-unknown", product="no-such-product")).status_code == 404


async def test_a_signed_webhook_grants_once_and_counts_once(client: httpx.AsyncClient, tenant: str) -> None:
    before = counter(scrape(client), "purchase_completed_total")
    order = (await checkout(client, tenant, "buy-1")).json()["order"]
    body = payment(tenant, order)
    first = await deliver(client, body)
    assert (first.status_code, first.json()["granted"]) == (200, True)
    replayed = await deliver(client, body)  # the provider delivers at least once
    assert (replayed.status_code, replayed.json()["status"]) == (200, "duplicate")
    another_event = await deliver(client, payment(tenant, order))  # a second event for the same order
    assert (another_event.status_code, another_event.json()["granted"]) == (200, False)
    entitlements = (await client.get("/v1/entitlements", headers=bearer("ada", tenant))).json()["items"]
    assert [(e["product_id"], e["course_id"]) for e in entitlements] == [("python-101-full", "python-101")]
    assert (await client.get("/v1/lessons/python-101-files", headers=bearer("ada", tenant))).status_code == 200
    assert counter(scrape(client), "purchase_completed_total") == before + 1


async def test_forged_and_stale_webhooks_are_refused(client: httpx.AsyncClient, tenant: str) -> None:
    order = (await checkout(client, tenant, "buy-2")).json()["order"]
    body = payment(tenant, order)
    cases = [
        (sign("not-the-secret-at-all-0123456789", body), "does not match"),
        # 301 s off when signed; a second more if delivering it takes one on a busy machine
        (sign(WEBHOOK_SECRET, body, timestamp=int(time.time()) - 301), re.compile(r"\b30[1-9] s off")),
        (sign(WEBHOOK_SECRET, body, timestamp=int(time.time()) + 400), "at most 300 s"),
        (sign(WEBHOOK_SECRET, body.replace(b"\"amount_cents\": 1900", b"\"amount_cents\": 1")), "does not match"),
        ("v1=abc", "t=<unix seconds>"),
    ]
    for signature, detail in cases:
        response = await deliver(client, body, signature)
        assert response.status_code == 400
        said = response.json()["detail"]
        assert detail.search(said) if isinstance(detail, re.Pattern) else detail in said, said
    tampered = body.replace(b"\"amount_cents\": 1900", b"\"amount_cents\": 1")
    underpaid = await deliver(client, tampered, sign(WEBHOOK_SECRET, tampered))  # signed, but the wrong amount
    assert underpaid.status_code == 422
    assert "costs 1900 EUR" in underpaid.json()["detail"]
    assert (await client.get("/v1/entitlements", headers=bearer("ada", tenant))).json()["items"] == []
    assert (await client.get("/v1/lessons/python-101-files", headers=bearer("ada", tenant))).status_code == 403


async def test_enrolling_twice_enrolls_once_and_counts_once(client: httpx.AsyncClient, tenant: str) -> None:
    before = counter(scrape(client), "course_enrollments_total")
    first = await client.post("/v1/enrollments", json={"course_id": "sql-basics"}, headers=bearer("ada", tenant))
    again = await client.post("/v1/enrollments", json={"course_id": "sql-basics"}, headers=bearer("ada", tenant))
    assert (first.status_code, again.status_code) == (201, 200)
    missing = await client.post("/v1/enrollments", json={"course_id": "nope"}, headers=bearer("ada", tenant))
    assert missing.status_code == 404
    mine = (await client.get("/v1/enrollments", headers=bearer("ada", tenant))).json()["items"]
    assert [e["course_id"] for e in mine] == ["sql-basics"]
    assert counter(scrape(client), "course_enrollments_total") == before + 1


async def test_old_bookkeeping_is_pruned_across_tenants_and_fresh_is_kept(database_url: str,
                                                                          admin_database_url: str) -> None:
    tenants = [f"prune-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for tenant in tenants:
        await admin_execute("INSERT INTO tenants (id, name) VALUES ($1, $1)", tenant, url=admin_database_url)
        await admin_execute(
            "INSERT INTO idempotency_keys (tenant_id, learner_id, key, request_hash, state, claimed_at) VALUES"
            " ($1, 'ada', 'old', 'h', 'done', now() - interval '2 days'),"
            " ($1, 'ada', 'new', 'h', 'done', now())", tenant, url=admin_database_url)
        await admin_execute(
            "INSERT INTO payment_events (tenant_id, event_id, type, received_at) VALUES"
            " ($1, 'evt_old', 'payment.succeeded', now() - interval '40 days'),"
            " ($1, 'evt_new', 'payment.succeeded', now())", tenant, url=admin_database_url)
    connection = await asyncpg.connect(database_url)  # the services' role: it sees no tenant, yet may prune
    try:
        keys, events = await prune_bookkeeping(connection, keys_days=1, events_days=30)
        assert keys >= 2
        assert events >= 2
        # directly, the same role deletes nothing of anyone's: row-level security hides every tenant
        assert await connection.execute("DELETE FROM idempotency_keys") == "DELETE 0"
    finally:
        await connection.close()
    admin = await asyncpg.connect(admin_database_url)
    try:
        left = await admin.fetch("SELECT tenant_id, key FROM idempotency_keys WHERE tenant_id = ANY($1)", tenants)
        assert sorted((r["tenant_id"], r["key"]) for r in left) == sorted((t, "new") for t in tenants)
        kept = await admin.fetch("SELECT event_id FROM payment_events WHERE tenant_id = ANY($1)", tenants)
        assert {r["event_id"] for r in kept} == {"evt_new"}
    finally:
        await admin.close()
