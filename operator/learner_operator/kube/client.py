"""A small typed wrapper over ``kubernetes.aio``'s ApiClient for the verbs the operator uses."""

from __future__ import annotations

import collections
import datetime
import json
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from kubernetes.aio import client as k8s

from learner_operator.kube.paths import ResourceRef
from learner_operator.models import FIELD_MANAGER

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"


class ApiError(Exception):
    """The API server refused a request; ``reason``/``message`` come from its Status object."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


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

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None, accept: str = "application/json",
    ) -> dict[str, Any] | None:
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

    async def list_metadata(
        self, api_version: str, plural: str, namespace: str | None = None, label_selector: str = "",
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of a kind (metadata is all that is sure to be there), and the list's resourceVersion.

        Asks for PartialObjectMetadataList, which real servers answer with metadata only (a fraction of
        the bytes of a full Deployment); a server that cannot falls back to the full objects. Paged.
        """
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        path = f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}" if namespace else f"{prefix}/{plural}"
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", "500")] + ([("labelSelector", label_selector)] if label_selector else []) + (
                [("continue", token)] if token else [])
            page = await self._call("GET", path, query=query, accept=_METADATA_LIST) or {}
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    async def list_objects(
        self, api_version: str, plural: str, namespace: str, label_selector: str,
    ) -> list[dict[str, Any]]:
        """The whole objects of a kind in one namespace that match ``label_selector`` (a small set: one page)."""
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        page = await self._call("GET", f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}",
                                query=[("labelSelector", label_selector)]) or {}
        items: list[dict[str, Any]] = page.get("items") or []
        return items

    async def served(self, api_version: str, plural: str) -> bool:
        """Does the cluster serve this kind? (Discovery: a kind without its CRD answers every write 404.)"""
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        found = await self._call("GET", prefix)
        return found is not None and any(r.get("name") == plural for r in found.get("resources") or [])

    async def apply(self, ref: ResourceRef, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over fields someone else changed."""
        result = await self._call(
            "PATCH", ref.path(), body=manifest, content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
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


def _error(status: int, data: bytes) -> ApiError:
    try:
        payload = json.loads(data)
        return ApiError(status, str(payload.get("reason") or status), str(payload.get("message") or ""))
    except ValueError:
        return ApiError(status, "Unknown", data[:200].decode(errors="replace"))


async def connect(
    host: str | None = None, counter: RequestCounter | None = None, *, kubeconfig: str | None = None,
) -> KubeApi:
    """In-cluster config when there, else the kubeconfig; ``host`` (the emulator: plain HTTP, no credentials)
    overrides both, and an explicit ``kubeconfig`` file (a real test cluster: its CA and a token) wins over
    the in-cluster config."""
    from kubernetes.aio import config as k8s_config

    configuration = k8s.Configuration()
    # trust_env makes aiohttp read ~/.netrc in a thread for every request; proxies for the API
    # server belong in the kubeconfig, not in the environment.
    configuration.client_session_kwargs = {"trust_env": False}
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
