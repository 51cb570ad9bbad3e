"""A small typed wrapper over ``kubernetes.aio``'s ApiClient for the verbs the operator uses."""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes.aio import client as k8s

from learner_operator.kube.paths import ResourceRef
from learner_operator.models import FIELD_MANAGER

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


class ApiError(Exception):
    """The API server refused a request; ``reason``/``message`` come from its Status object."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotLeading(Exception):  # a state, not an error of the request
    """A write refused before it was sent: this replica can no longer be sure that it holds the Lease."""


class RequestCounter:
    """Counts requests by verb: for /metrics, and for the benchmark's requests-per-reconcile."""

    def __init__(self, hook: Callable[[str], None] | None = None) -> None:
        self.by_verb: collections.Counter[str] = collections.Counter()
        self._hook = hook

    def count(self, verb: str) -> None:
        self.by_verb[verb] += 1
        if self._hook is not None:
            self._hook(verb)

    @property
    def mutating(self) -> int:
        return sum(count for verb, count in self.by_verb.items() if verb in MUTATING)


class KubeApi:
    def __init__(self, api_client: k8s.ApiClient, counter: RequestCounter | None = None,
                 host: str | None = None, kubeconfig: str | None = None) -> None:
        self._api = api_client
        self.counter = counter or RequestCounter()
        #: The host and kubeconfig given to :func:`connect`, so that a second client reaches the same server.
        self.host = host
        self.kubeconfig = kubeconfig
        #: Called before every write; raises :class:`NotLeading` when this replica may have lost the Lease.
        self.write_fence: Callable[[], None] | None = None

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None, accept: str = "application/json",
    ) -> dict[str, Any] | None:
        if method in MUTATING and self.write_fence is not None:
            self.write_fence()
        self.counter.count(method)
        headers = {"Accept": accept, "Content-Type": content_type}
        # The body is plain JSON already: handing it to call_api directly skips the generated client's
        # recursive sanitize_for_serialization walk of every manifest.
        method_, url, header_params, _, _ = await self._api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers,
            auth_settings=["BearerToken"],
        )
        response = await self._api.call_api(method_, url, header_params, body)
        data = await response.read()
        if response.status == 404 and method in ("GET", "DELETE"):
            return None
        if not 200 <= response.status < 300:
            raise _error(response.status, data)
        parsed: dict[str, Any] = json.loads(data) if data else {}
        return parsed

    async def get(self, ref: ResourceRef) -> dict[str, Any] | None:
        return await self._call("GET", ref.path())

    async def list_objects(
        self, api_version: str, plural: str, namespace: str | None = None, label_selector: str = "",
        *, accept: str = "application/json",
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of a kind, and the list's resourceVersion (paged, 500 a page)."""
        path = _collection(api_version, plural, namespace)
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", "500")] + ([("labelSelector", label_selector)] if label_selector else []) + (
                [("continue", token)] if token else [])
            page = await self._call("GET", path, query=query, accept=accept)
            if page is None:  # a list is never "not found": the kind is not served (its CRD is gone)
                raise ApiError(404, "NotFound", f"the server does not serve {api_version} {plural}")
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    async def list_metadata(
        self, api_version: str, plural: str, namespace: str | None = None, label_selector: str = "",
    ) -> tuple[list[dict[str, Any]], str]:
        """Like :meth:`list_objects`, asking for PartialObjectMetadataList: real servers answer with metadata
        only (a fraction of the bytes of a full Deployment); a server that cannot sends the full objects."""
        return await self.list_objects(api_version, plural, namespace, label_selector, accept=_METADATA_LIST)

    @contextlib.asynccontextmanager
    async def stream(
        self, api_version: str, plural: str, namespace: str | None, query: list[tuple[str, str]], *,
        accept: str = "application/json", read_timeout: float = 360.0,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A watch request: yields its lines (one JSON event each) until the server ends the stream."""
        self.counter.count("WATCH")
        headers = {"Accept": accept}
        method, url, header_params, _, _ = await self._api.param_serialize(
            method="GET", resource_path=_collection(api_version, plural, namespace), query_params=query,
            header_params=headers, auth_settings=["BearerToken"],
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        response = await self._api.call_api(method, url, header_params, None, _request_timeout=timeout)
        raw: aiohttp.ClientResponse = response.response
        try:
            if raw.status != 200:
                raise _error(raw.status, await raw.read())
            yield _lines(raw.content)
        finally:
            raw.release()

    async def served(self, api_version: str, plural: str) -> bool:
        """Does the cluster serve this kind? (Discovery: a kind without its CRD answers every write 404.)"""
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        found = await self._call("GET", prefix)
        return found is not None and any(r.get("name") == plural for r in found.get("resources") or [])

    async def apply(self, ref: ResourceRef, manifest: dict[str, Any], *, manager: str = FIELD_MANAGER,
                    force: bool = True) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over fields someone else changed."""
        result = await self._call(
            "PATCH", ref.path(), body=manifest, content_type="application/apply-patch+yaml",
            query=[("fieldManager", manager), ("force", "true" if force else "false")],
        )
        assert result is not None
        return result

    async def create(self, ref: ResourceRef, body: dict[str, Any]) -> dict[str, Any]:
        result = await self._call("POST", ref.collection_path(), body=body, query=[("fieldManager", FIELD_MANAGER)])
        assert result is not None
        return result

    async def merge_patch(self, ref: ResourceRef, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch; a ``metadata.resourceVersion`` in it makes it conditional (409 if stale)."""
        result = await self._call("PATCH", ref.path(), body=patch, content_type="application/merge-patch+json",
                                  query=[("fieldManager", FIELD_MANAGER)])
        assert result is not None
        return result

    async def json_patch(self, ref: ResourceRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """JSON patch (RFC 6902): a failed ``test`` operation refuses the whole patch (422)."""
        result = await self._call("PATCH", ref.path(), body=ops, content_type="application/json-patch+json",
                                  query=[("fieldManager", FIELD_MANAGER)])
        assert result is not None
        return result

    async def delete(self, ref: ResourceRef) -> bool:
        """Delete in the background (dependents go through garbage collection); False if it was gone."""
        result = await self._call(
            "DELETE", ref.path(), body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
        return result is not None

    async def patch_status(self, ref: ResourceRef, status: dict[str, Any]) -> dict[str, Any]:
        result = await self._call(
            "PATCH", ref.path("status"), body={"status": status}, content_type="application/merge-patch+json",
            query=[("fieldManager", FIELD_MANAGER)],
        )
        assert result is not None
        return result


    async def post_event(self, involved: dict[str, str], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``involved`` (what `kubectl describe` lists), from this operator."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = involved["namespace"]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{involved['name']}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": involved, "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        await self._call("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/events", body=event)


def _collection(api_version: str, plural: str, namespace: str | None) -> str:
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}" if namespace else f"{prefix}/{plural}"


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-separated records of any length (StreamReader.readline caps a line at 64 KiB)."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _error(status: int, data: bytes) -> ApiError:
    try:
        payload = json.loads(data)
        return ApiError(status, str(payload.get("reason") or status), str(payload.get("message") or ""))
    except ValueError:
        return ApiError(status, "Unknown", data[:200].decode(errors="replace"))


async def connect(
    host: str | None = None, counter: RequestCounter | None = None, *, kubeconfig: str | None = None,
    connections: int = 100,
) -> KubeApi:
    """In-cluster config when there, else the kubeconfig; ``host`` (the emulator: plain HTTP, no credentials)
    overrides both, and an explicit ``kubeconfig`` file (a real test cluster: its CA and a token) wins over
    the in-cluster config."""
    from kubernetes.aio import config as k8s_config

    configuration = k8s.Configuration()
    # trust_env makes aiohttp read ~/.netrc in a thread for every request; proxies for the API
    # server belong in the kubeconfig, not in the environment.
    configuration.client_session_kwargs = {"trust_env": False}
    configuration.connection_pool_maxsize = connections
    if host is not None:
        configuration.host = host
    elif kubeconfig is not None:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=configuration)
    return KubeApi(k8s.ApiClient(configuration), counter, host, kubeconfig)
