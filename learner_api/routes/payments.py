"""The payment provider's webhook: signed (HMAC), fresh (300 s), deduplicated by event id, fulfilled once.

There is no bearer token here: the signature is the authentication, and the tenant comes from the signed
body (the order's metadata set at checkout), never from the URL.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from learner_api.data import store
from learner_api.dependencies import DatabaseDep
from learner_api.problems import Problem
from learner_api.settings import Settings
from learner_api.webhook_signature import HEADER, SignatureError, verify

router = APIRouter(prefix="/v1/webhooks", tags=["store"])


class PaymentData(BaseModel):
    tenant: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    order_id: uuid.UUID
    amount_cents: int
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class PaymentEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")  # providers add fields over time

    #: Printable ASCII: a NUL (which PostgreSQL cannot store) is refused as a 422, never a 500.
    id: Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,255}$")]
    type: Literal["payment.succeeded", "payment.failed"]
    data: PaymentData


@router.post("/payments", summary="Payment provider events (HMAC-signed)",
             responses={400: {"description": "missing, stale or wrong signature"}})
async def payment_webhook(request: Request, database: DatabaseDep) -> dict[str, object]:
    settings: Settings = request.app.state.settings
    if settings.payment_webhook_secret is None:
        raise Problem(503, "payments are not configured: set PAYMENT_WEBHOOK_SECRET")
    raw = await request.body()
    try:
        verify(settings.payment_webhook_secret.get_secret_value(), raw, request.headers.get(HEADER))
    except SignatureError as exc:
        raise Problem(400, str(exc)) from None
    try:
        event = PaymentEvent.model_validate_json(raw)
    except ValidationError as exc:
        raise Problem(422, f"not a payment event this API understands: {exc.errors()[0]['msg']}") from None
    tenant = event.data.tenant if settings.tenant_mode == "enabled" else "default"
    granted = False
    async with database.tenant(tenant) as connection:
        if not await store.record_payment_event(connection, tenant=tenant, event_id=event.id, type_=event.type):
            return {"status": "duplicate", "event": event.id}
        if event.type == "payment.failed":
            await store.fail_order(connection, order_id=event.data.order_id)
        else:
            try:
                granted = await store.fulfill(connection, tenant=tenant, order_id=event.data.order_id,
                                              amount_cents=event.data.amount_cents, currency=event.data.currency)
            except store.FulfillmentError as exc:  # the transaction rolls back: the event may come again
                raise Problem(422, str(exc)) from None
    if granted:
        request.app.state.business.purchases.inc()
    return {"status": "processed", "event": event.id, "granted": granted}
