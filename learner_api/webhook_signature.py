"""Payment webhooks: HMAC-SHA256 over "<timestamp>.<raw body>", in the header
``Payment-Signature: t=<unix seconds>,v1=<hex>`` (the scheme Stripe uses; several v1 values are allowed
while the provider rotates its secret). Older or newer than ``tolerance`` seconds is refused, so a
captured request cannot be replayed later; the event id dedupe catches replays inside the window.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Payment-Signature"
TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    pass


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str | None, *, now: float | None = None,
           tolerance: int = TOLERANCE_SECONDS) -> None:
    if not header:
        raise SignatureError(f"the {HEADER} header is missing")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"the {HEADER} header has no t=<unix seconds>") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"the signature's timestamp is {int(now - timestamp)} s off; at most {tolerance} s "
                             "is accepted (a replay, or a clock that is wrong)")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", [])):
        raise SignatureError("the signature does not match the body (wrong secret, or the body was changed)")
