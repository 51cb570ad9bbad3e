"""The store's rows: catalog, orders, idempotency keys, payment events, entitlements."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

#: An in-flight claim older than this is taken to belong to a process that died mid-request.
ABANDONED_AFTER_SECONDS = 60


async def list_products(connection: asyncpg.Connection, *, course_id: str | None) -> list[dict[str, Any]]:
    rows = await connection.fetch(
        "SELECT id, course_id, title, price_cents, currency FROM products"
        " WHERE active AND ($1::text IS NULL OR course_id = $1) ORDER BY id", course_id)
    return [dict(row) for row in rows]


async def get_product(connection: asyncpg.Connection, *, product_id: str) -> dict[str, Any] | None:
    row = await connection.fetchrow(
        "SELECT id, course_id, title, price_cents, currency FROM products WHERE id = $1 AND active", product_id)
    return dict(row) if row is not None else None


async def create_order(connection: asyncpg.Connection, *, tenant: str, learner: str,
                       product: dict[str, Any]) -> dict[str, Any]:
    row = await connection.fetchrow(
        "INSERT INTO orders (tenant_id, id, learner_id, product_id, amount_cents, currency)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, product_id, amount_cents, currency, status, created_at",
        tenant, uuid.uuid4(), learner, product["id"], product["price_cents"], product["currency"])
    return {**dict(row), "id": str(row["id"]), "created_at": row["created_at"].isoformat()}


@dataclass(frozen=True)
class Claim:
    """What an Idempotency-Key says about this request: go ahead, or replay/refuse."""

    state: str  # "claimed" (do the work), "replay", "in_flight", "mismatch"
    status: int | None = None
    body: Any = None


async def claim_key(connection: asyncpg.Connection, *, tenant: str, learner: str, key: str,
                    request_hash: str) -> Claim:
    inserted = await connection.fetchval(
        "INSERT INTO idempotency_keys (tenant_id, learner_id, key, request_hash, state)"
        " VALUES ($1, $2, $3, $4, 'in_flight') ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING"
        " RETURNING 1", tenant, learner, key, request_hash)
    if inserted is not None:
        return Claim("claimed")
    row = await connection.fetchrow(
        "SELECT request_hash, state, response_status, response_body,"
        " claimed_at < now() - make_interval(secs => $3) AS abandoned"
        " FROM idempotency_keys WHERE learner_id = $1 AND key = $2 FOR UPDATE", learner, key, ABANDONED_AFTER_SECONDS)
    if row["request_hash"] != request_hash:
        return Claim("mismatch")
    if row["state"] == "done":
        return Claim("replay", row["response_status"], json.loads(row["response_body"]))
    if row["abandoned"]:
        await connection.execute("UPDATE idempotency_keys SET claimed_at = now() WHERE learner_id = $1 AND key = $2",
                                 learner, key)
        return Claim("claimed")
    return Claim("in_flight")


async def complete_key(connection: asyncpg.Connection, *, learner: str, key: str, status: int, body: Any) -> None:
    await connection.execute(
        "UPDATE idempotency_keys SET state = 'done', response_status = $3, response_body = $4::jsonb"
        " WHERE learner_id = $1 AND key = $2", learner, key, status, json.dumps(body))


async def release_key(connection: asyncpg.Connection, *, learner: str, key: str) -> None:
    await connection.execute("DELETE FROM idempotency_keys WHERE learner_id = $1 AND key = $2 AND state = 'in_flight'",
                             learner, key)


async def record_payment_event(connection: asyncpg.Connection, *, tenant: str, event_id: str, type_: str) -> bool:
    """False when the provider delivered this event before (it is then ignored)."""
    inserted = await connection.fetchval(
        "INSERT INTO payment_events (tenant_id, event_id, type) VALUES ($1, $2, $3)"
        " ON CONFLICT ON CONSTRAINT payment_events_pkey DO NOTHING RETURNING 1", tenant, event_id, type_)
    return inserted is not None


class FulfillmentError(ValueError):
    """The payment does not match an order we can fulfill."""


async def fulfill(connection: asyncpg.Connection, *, tenant: str, order_id: uuid.UUID, amount_cents: int,
                  currency: str) -> bool:
    """Mark the order paid and grant its entitlement. Idempotent: True only when the grant is new."""
    order = await connection.fetchrow(
        "SELECT learner_id, product_id, amount_cents, currency, status FROM orders WHERE id = $1 FOR UPDATE",
        order_id)
    if order is None:
        raise FulfillmentError(f"there is no order {order_id}")
    if (order["amount_cents"], order["currency"]) != (amount_cents, currency):
        raise FulfillmentError(f"order {order_id} costs {order['amount_cents']} {order['currency']}, "
                               f"the payment was {amount_cents} {currency}")
    if order["status"] != "paid":
        await connection.execute("UPDATE orders SET status = 'paid', paid_at = now() WHERE id = $1", order_id)
    granted = await connection.fetchval(
        "INSERT INTO entitlements (tenant_id, learner_id, product_id, order_id) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT ON CONSTRAINT entitlements_once DO NOTHING RETURNING 1",
        tenant, order["learner_id"], order["product_id"], order_id)
    return granted is not None


async def fail_order(connection: asyncpg.Connection, *, order_id: uuid.UUID) -> None:
    await connection.execute("UPDATE orders SET status = 'failed' WHERE id = $1 AND status = 'pending'", order_id)


async def list_entitlements(connection: asyncpg.Connection, *, learner: str) -> list[dict[str, Any]]:
    rows = await connection.fetch(
        "SELECT e.product_id, p.course_id, e.granted_at FROM entitlements e"
        " JOIN products p ON p.tenant_id = e.tenant_id AND p.id = e.product_id"
        " WHERE e.learner_id = $1 ORDER BY e.granted_at", learner)
    return [{"product_id": r["product_id"], "course_id": r["course_id"], "granted_at": r["granted_at"].isoformat()}
            for r in rows]
