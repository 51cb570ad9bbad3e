"""Page cursors that only this API can have made: the last id of a page plus an HMAC over the tenant and
that id. A cursor that does not verify is a 400 before anything is looked up or cached, so a client
cannot make up cursors to fill the cache (every distinct cursor would be a cache key).

The key is derived from DATABASE_URL, the one secret every replica shares (a cursor from one replica
verifies on the next); rotating the database password invalidates open cursors, which clients survive
by starting from the first page again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from learner_api.problems import Problem

_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_MAC_BYTES = 12


class Cursors:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"learner-api cursors v1\0" + secret.encode()).digest()

    def _mac(self, tenant: str, last_id: str) -> bytes:
        return hmac.new(self._key, f"{tenant}\0{last_id}".encode(), hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, tenant: str, last_id: str) -> str:
        return _b64(last_id.encode()) + "." + _b64(self._mac(tenant, last_id))

    def read(self, tenant: str, cursor: str) -> str:
        """The id a cursor continues after; 400 for anything this API did not issue to this tenant."""
        encoded = cursor.partition(".")[0]
        try:
            last_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            last_id = ""
        # the one spelling this API issues: no other padding or alphabet makes another cursor (cache key)
        if not _ID.fullmatch(last_id) or not hmac.compare_digest(self.issue(tenant, last_id).encode(),
                                                                  cursor.encode("utf-8", "replace")):
            raise Problem(400, "the cursor is not one this API gave out; start again without it")
        return last_id

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
