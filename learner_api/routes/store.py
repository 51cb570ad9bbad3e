"""The store: catalog, checkout (Idempotency-Key required), my entitlements.

Prices come from the catalog in PostgreSQL only; the checkout body names a product and nothing else.
An Idempotency-Key is claimed in its own transaction before the order is made, so 50 clients racing
with one key make one order: the others get the stored response (same body), 422 (another body) or 409
(the first is still running). A request that fails releases its key so that it can be retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from learner_api.auth import IdentityDep
from learner_api.data import store
from learner_api.dependencies import DatabaseDep
from learner_api.problems import Problem
from learner_api.rate_limit import CostlyIdentityDep

router = APIRouter(prefix="/v1", tags=["store"])

IdPattern = r"^[a-z0-9][a-z0-9-]{0,62}$"


class CheckoutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a "price" field is refused, not ignored

    product_id: Annotated[str, Field(pattern=IdPattern)]


@router.get("/products", summary="The catalog, with server-side prices")
async def list_products(identity: CostlyIdentityDep, database: DatabaseDep,
                        course_id: Annotated[str | None, Query(pattern=IdPattern)] = None
                        ) -> dict[str, list[dict[str, Any]]]:
    async with database.tenant(identity.tenant) as connection:
        return {"items": await store.list_products(connection, course_id=course_id)}


#: Printable ASCII (a UUID, typically): it is stored, and compared byte for byte on a retry.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class _Superseded(Exception):
    """A retry took over this request's Idempotency-Key while it ran: its order must not commit."""


@router.post("/checkout", status_code=201, summary="Order a product (send an Idempotency-Key)",
             responses={409: {"description": "a request with this Idempotency-Key is still in progress"},
                        422: {"description": "the Idempotency-Key was used with another body"}})
async def checkout(request: Request, body: CheckoutRequest, identity: IdentityDep, database: DatabaseDep,
                   idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
    if not idempotency_key or not _KEY.fullmatch(idempotency_key):
        raise Problem(400, "send an Idempotency-Key header (a UUID you make per purchase; 1-255 printable "
                           "ASCII characters) so that a retry cannot buy twice")
    request_hash = hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()
    key = {"learner": identity.learner, "key": idempotency_key}
    async with database.tenant(identity.tenant) as connection:
        claim = await store.claim_key(connection, tenant=identity.tenant, request_hash=request_hash,
                                      abandoned_after=request.app.state.settings.idempotency_claim_seconds, **key)
    if claim.state == "mismatch":
        raise Problem(422, "this Idempotency-Key was already used for a different request; use a new key")
    if claim.state == "in_flight":
        raise Problem(409, "a request with this Idempotency-Key is still being processed; retry shortly",
                      headers={"Retry-After": "1"})
    if claim.state == "replay":
        return JSONResponse(claim.body, status_code=claim.status or 201, headers={"Idempotent-Replayed": "true"})
    assert claim.fence is not None
    try:
        async with database.tenant(identity.tenant) as connection:
            product = await store.get_product(connection, product_id=body.product_id)
            if product is None:
                raise Problem(404, f"there is no product '{body.product_id}' for sale")
            order = await store.create_order(connection, tenant=identity.tenant, learner=identity.learner,
                                             product=product)
            response = {"order": order, "next": "pay with your payment provider; the purchase completes when "
                                                "its webhook confirms the payment"}
            if not await store.complete_key(connection, status=201, body=response, fence=claim.fence, **key):
                raise _Superseded  # rolls the order back
    except _Superseded:
        raise Problem(409, "this request took too long and a retry with the same Idempotency-Key took over; "
                           "that retry's answer is the one that counts (send it again to see it)",
                      headers={"Retry-After": "1"}) from None
    except BaseException:
        with contextlib.suppress(Problem):  # PostgreSQL down: the claim expires on its own
            async with database.tenant(identity.tenant) as connection:
                await store.release_key(connection, fence=claim.fence, **key)
        raise
    return JSONResponse(response, status_code=201)


@router.get("/entitlements", summary="What I have bought")
async def my_entitlements(identity: CostlyIdentityDep, database: DatabaseDep) -> dict[str, list[dict[str, Any]]]:
    async with database.tenant(identity.tenant) as connection:
        return {"items": await store.list_entitlements(connection, learner=identity.learner)}
