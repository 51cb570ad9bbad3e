"""One user's requests, from a real API server's audit log, in the shape the emulator records them.

The emulator's ``cluster.log`` is a list of ``kmock.Request``; on a real server the same list is read
from the audit log (``--audit-log-path``: one ``audit.k8s.io/v1`` Event per line, JSON), so tests can
count and inspect the operator's requests the same way on both backends. What an audit Event lacks
is filled in as follows:

- the HTTP method comes from the verb (get/list/watch: GET, create: POST, update: PUT, patch: PATCH,
  delete/deletecollection: DELETE);
- the Content-Type of a PATCH is not recorded: one with ``force`` in its query is taken for a
  server-side apply (the API server allows ``force`` on apply patches only), any other for a merge patch;
- the body is the event's ``requestObject`` (present at the ``Request`` audit level and above).

A request is logged at several stages (ResponseStarted for watches, ResponseComplete); only its first
event counts, keyed by ``auditID``, so a watch shows up when it starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kmock
import yarl

_METHODS = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT", "patch": "PATCH",
            "delete": "DELETE", "deletecollection": "DELETE"}
_ACTIONS = {"get": kmock.action.FETCH, "list": kmock.action.LIST, "watch": kmock.action.WATCH,
            "create": kmock.action.CREATE, "update": kmock.action.UPDATE, "patch": kmock.action.UPDATE,
            "delete": kmock.action.DELETE, "deletecollection": kmock.action.DELETE}
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def to_request(event: dict[str, Any], number: int = 0) -> kmock.Request:
    verb = str(event.get("verb") or "get")
    url = yarl.URL(str(event.get("requestURI") or "/"))
    params = {key: url.query[key] for key in url.query}
    method = _METHODS.get(verb, "GET")
    if method == "PATCH":
        content_type = "application/apply-patch+yaml" if "force" in params else "application/merge-patch+json"
    else:
        content_type = "application/json"
    ref = event.get("objectRef")
    resource = None
    if ref and ref.get("resource"):
        resource = kmock.resource(ref.get("apiGroup") or "", ref.get("apiVersion") or "", ref["resource"])
    data = event.get("requestObject")
    return kmock.Request(
        id=number, method=method, url=url, params=params, headers={"Content-Type": content_type},
        body=json.dumps(data).encode() if data is not None else b"", data=data,
        action=_ACTIONS.get(verb) if resource is not None else None, resource=resource,
        namespace=(ref or {}).get("namespace"), name=(ref or {}).get("name"),
        subresource=(ref or {}).get("subresource"),
    )


class AuditLog:
    """The requests of ``user`` appended to the audit log since this reader was made (read as it grows)."""

    def __init__(self, path: Path, user: str, *, from_start: bool = False) -> None:
        self.path = path
        self.user = user
        self._offset = 0 if from_start or not path.exists() else path.stat().st_size
        self._seen: set[str] = set()
        self._requests: list[kmock.Request] = []

    @property
    def requests(self) -> list[kmock.Request]:
        self._read()
        return self._requests

    def _read(self) -> None:
        if not self.path.exists():
            return
        if self.path.stat().st_size < self._offset:
            self._offset = 0  # rotated: the live file is a new one
        with self.path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        complete = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
        self._offset += complete
        for line in chunk[:complete].splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            if (event.get("user") or {}).get("username") != self.user or event.get("auditID") in self._seen:
                continue
            self._seen.add(event.get("auditID"))
            self._requests.append(to_request(event, len(self._requests)))
