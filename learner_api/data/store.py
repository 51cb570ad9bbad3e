"""The store's rows: catalog, orders, idempotency keys, payment events, entitlements."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

#: An in-flight claim older than this is taken to belong to a process that died mid-request (a retry may
#: take it over; the fencing token keeps the first request from committing after that).
ABANDONED_AFTER_SECONDS = 60.0


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
    """What an Idempotency-Key says about this request: go ahead (with this fencing token), or replay/refuse."""

    state: str  # "claimed" (do the work), "replay", "in_flight", "mismatch"
    status: int | None = None
    body: Any = None
    fence: uuid.UUID | None = None


async def claim_key(connection: asyncpg.Connection, *, tenant: str, learner: str, key: str, request_hash: str,
                    abandoned_after: float = ABANDONED_AFTER_SECONDS) -> Claim:
    fence = uuid.uuid4()
    inserted = await connection.fetchval(
        "INSERT INTO idempotency_keys (tenant_id, learner_id, key, request_hash, state, fence)"
        " VALUES ($1, $2, $3, $4, 'in_flight', $5) ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING"
        " RETURNING 1", tenant, learner, key, request_hash, fence)
    if inserted is not None:
        return Claim("claimed", fence=fence)
    row = await connection.fetchrow(
        "SELECT request_hash, state, response_status, response_body,"
        " claimed_at < now() - make_interval(secs => $3) AS abandoned"
        " FROM idempotency_keys WHERE learner_id = $1 AND key = $2 FOR UPDATE", learner, key, abandoned_after)
    if row["request_hash"] != request_hash:
        return Claim("mismatch")
    if row["state"] == "done":
        return Claim("replay", row["response_status"], json.loads(row["response_body"]))
    if row["abandoned"]:  # taken over: whoever held it can no longer complete it
        await connection.execute("UPDATE idempotency_keys SET claimed_at = now(), fence = $3"
                                 " WHERE learner_id = $1 AND key = $2", learner, key, fence)
        return Claim("claimed", fence=fence)
    return Claim("in_flight")


async def complete_key(connection: asyncpg.Connection, *, learner: str, key: str, fence: uuid.UUID, status: int,
                       body: Any) -> bool:
    """Store the response, in the order's transaction; False (and the caller must roll back) when the
    claim was taken over meanwhile. The row lock this takes orders us against a concurrent take-over."""
    done = await connection.fetchval(
        "UPDATE idempotency_keys SET state = 'done', response_status = $4, response_body = $5::jsonb"
        " WHERE learner_id = $1 AND key = $2 AND fence = $3 AND state = 'in_flight' RETURNING 1",
        learner, key, fence, status, json.dumps(body))
    return done is not None


async def release_key(connection: asyncpg.Connection, *, learner: str, key: str, fence: uuid.UUID) -> None:
    """Give the key back after a failure, unless someone else holds it by now."""
    await connection.execute(
        "DELETE FROM idempotency_keys WHERE learner_id = $1 AND key = $2 AND fence = $3 AND state = 'in_flight'",
        learner, key, fence)


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
