"""Blocking HTTPS to a real API server as a client-certificate user: for test code, not for the operator.

Tests call the cluster synchronously (``cluster.put(...)`` inside ``eventually`` lambdas), as they do
the in-process emulator; the operator runs in its own thread, so a blocking call here never stalls it.
Refusals raise ``kmock.KubernetesError``, the exception the emulator raises, with the server's Status.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import kmock

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


def _prefix(api_version: str) -> str:
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


def path(api_version: str, plural: str, namespace: str | None, name: str | None = None,
         subresource: str | None = None) -> str:
    """The REST path of a collection, an object or its subresource (``namespace`` None: cluster-scoped)."""
    out = _prefix(api_version)
    if namespace:
        out += f"/namespaces/{quote(namespace, safe='')}"
    out += f"/{plural}"
    if name:
        out += f"/{quote(name, safe='')}"
    if subresource:
        out += f"/{subresource}"
    return out


def error_of(response: httpx.Response) -> kmock.KubernetesError:
    """The server's Status object as the emulator's exception (a body that is not a Status: its text)."""
    try:
        status = response.json()
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    return kmock.KubernetesError(status=response.status_code, reason=status.get("reason") or response.reason_phrase,
                                 message=status.get("message") or response.text[:500], details=status.get("details"))


class Rest:
    def __init__(self, url: str, ca_file: Path, cert_file: Path, key_file: Path, timeout: float = 30.0) -> None:
        self.url = url
        self._tls = ssl.create_default_context(cafile=str(ca_file))
        self._tls.load_cert_chain(str(cert_file), str(key_file))
        self._timeout = timeout
        self._http = self._client()
        self._resources: dict[str, list[dict[str, Any]]] = {}

    def _client(self) -> httpx.Client:
        # trust_env off: a proxy from the environment must not stand between the tests and 127.0.0.1.
        return httpx.Client(base_url=self.url, verify=self._tls, timeout=self._timeout, trust_env=False)

    def reconnect(self) -> None:
        """After the API server restarted: pooled connections are dead."""
        self._http.close()
        self._http = self._client()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, where: str, body: Any = None, *, params: dict[str, str] | None = None,
             content_type: str = "application/json") -> dict[str, Any]:
        content = None if body is None else json.dumps(body).encode()
        response = self._http.request(method, where, params=params, content=content,
                                      headers={"Content-Type": content_type, "Accept": "application/json"})
        if not response.is_success:
            raise error_of(response)
        answer: dict[str, Any] = response.json() if response.content else {}
        return answer

    def healthy(self, where: str) -> bool:
        """A health endpoint (/readyz, /livez) answers 200 with the text "ok"."""
        return self._http.get(where).status_code == 200

    def get(self, where: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", where)
        except kmock.KubernetesError as exc:
            if exc.status == 404:
                return None
            raise

    def _discover(self, api_version: str) -> list[dict[str, Any]]:
        if api_version not in self._resources:
            self._resources[api_version] = self.call("GET", _prefix(api_version)).get("resources") or []
        return self._resources[api_version]

    def resource(self, api_version: str, *, kind: str | None = None, plural: str | None = None) -> tuple[str, bool]:
        """(plural, namespaced) of a kind or plural, from discovery (asked again once for a kind it lacks)."""
        for attempt in range(2):
            for found in self._discover(api_version):
                if "/" not in found["name"] and (found["kind"] == kind or found["name"] == plural):
                    return str(found["name"]), bool(found["namespaced"])
            if attempt == 0:
                self._resources.pop(api_version, None)  # a CRD established since the last look
        raise kmock.KubernetesError(status=404, reason="NotFound",
                                    message=f"the server serves no {kind or plural} in {api_version}")

    def object_path(self, obj: dict[str, Any], subresource: str | None = None) -> str:
        plural, namespaced = self.resource(obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        return path(obj["apiVersion"], plural, meta.get("namespace") if namespaced else None, meta["name"],
                    subresource)

    def apply(self, obj: dict[str, Any], manager: str) -> dict[str, Any]:
        """Server-side apply, taking over conflicting fields (`kubectl apply --server-side --force-conflicts`)."""
        return self.call("PATCH", self.object_path(obj), obj, content_type=APPLY,
                         params={"fieldManager": manager, "force": "true"})
