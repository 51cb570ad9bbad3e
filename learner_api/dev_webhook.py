"""`learner-api dev-webhook`: play the payment provider on a developer's machine.

Checkout only creates a pending order; the purchase completes when the provider's signed webhook says
the payment succeeded. Locally there is no provider, so this signs an event for an order with
PAYMENT_WEBHOOK_SECRET (exactly as webhook_signature.verify expects) and sends it, completing the
purchase end to end. It reads the order from checkout's JSON answer on stdin, or from --order with
--amount-cents and --currency.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from typing import Any

from learner_api.webhook_signature import HEADER, sign


class WebhookError(Exception):
    """Why the event could not be sent; one line for the user."""


def order_from_checkout(text: str) -> dict[str, Any]:
    """The order in `POST /v1/checkout`'s answer ({"order": {...}, "next": ...})."""
    try:
        answer = json.loads(text)
    except ValueError:
        raise WebhookError("stdin is not checkout's JSON answer: pipe `curl ... /v1/checkout ...` into this, "
                           "or give --order, --amount-cents and --currency") from None
    order = answer.get("order") if isinstance(answer, dict) else None
    if not isinstance(order, dict) or not {"id", "amount_cents", "currency"} <= set(order):
        detail = answer.get("detail") if isinstance(answer, dict) else None
        raise WebhookError(f"checkout did not create an order{f': {detail}' if detail else ''}")
    return order


def event_body(order: dict[str, Any], tenant: str, *, failed: bool = False) -> bytes:
    return json.dumps({
        "id": f"evt_dev_{secrets.token_hex(8)}",
        "type": "payment.failed" if failed else "payment.succeeded",
        "data": {"tenant": tenant, "order_id": str(order["id"]), "amount_cents": int(order["amount_cents"]),
                 "currency": str(order["currency"])},
    }).encode()


def send(url: str, secret: str, body: bytes, timeout: float = 10) -> tuple[int, str]:
    """POST the signed event; returns the status and the answer's text (4xx/5xx included)."""
    request = urllib.request.Request(  # noqa: S310  # the URL is the developer's own API
        f"{url.rstrip('/')}/v1/webhooks/payments", data=body, method="POST",
        headers={"Content-Type": "application/json", HEADER: sign(secret, body)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookError(f"cannot reach {url}: {reason}") from None


def run(url: str, tenant: str, *, order_id: str | None, amount_cents: int | None, currency: str | None,
        failed: bool) -> int:
    secret = os.environ.get("PAYMENT_WEBHOOK_SECRET", "")
    if not secret:
        raise WebhookError("PAYMENT_WEBHOOK_SECRET is not set: use the one the API runs with "
                           "(`scripts/run api` prints it)")
    if order_id is not None:
        if amount_cents is None or currency is None:
            raise WebhookError("--order needs --amount-cents and --currency (checkout's answer has them)")
        order: dict[str, Any] = {"id": order_id, "amount_cents": amount_cents, "currency": currency}
    else:
        order = order_from_checkout(sys.stdin.read())
    status, text = send(url, secret, event_body(order, tenant, failed=failed))
    print(f"{status} {text}")
    return 0 if status < 300 else 1
