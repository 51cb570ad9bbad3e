"""A small typed wrapper over ``kubernetes.aio``'s ApiClient for the verbs the operator uses."""

from __future__ import annotations

import collections
import contextlib
import datetime
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import yarl
from kubernetes.aio import client as k8s
from kubernetes.aio.client.rest import RESTClientObject

from learner_operator.kube.paths import ResourceRef
from learner_operator.models import FIELD_MANAGER

logger = logging.getLogger(__name__)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
#: What the generated client allowed a request: five minutes (watches set their own read timeout).
_TIMEOUT = aiohttp.ClientTimeout(total=300)


class ApiError(Exception):
    """The API server refused a request; ``reason``/``message`` come from its Status object."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotLeading(Exception):  # a state, not an error of the request
    """A write refused before it was sent: this replica can no longer be sure that it holds the Lease."""


class Availability:
    """Whether the API server answers: for /healthz and /metrics, which must say the truth while it is away
    without failing the liveness probe (a restart cannot bring the API server back), and for ``on_return``.

    No answer is a connection error, a timeout, or 502/503/504 (the server, or the load balancer before it,
    saying it is not there). Any other status is an answer: a 500 from an admission webhook or a 429 from
    priority and fairness come from a working server. An outage is declared once requests have gone unanswered
    for AWAY_SECONDS: a single failed request between answered ones (one of several API servers down behind a
    load balancer) is not one; its start and its end are each logged once.
    """

    #: How long requests go unanswered before the server counts as away.
    AWAY_SECONDS = 2.0

    def __init__(self) -> None:
        #: ``time.monotonic()`` of the first unanswered request since the last answer; None: answering.
        self.failing_since: float | None = None
        self.last_error = ""
        self._declared = False
        #: Called once when the server answers again after an outage.
        self.on_return: Callable[[], None] = lambda: None

    @property
    def available(self) -> bool:
        return not self._declared

    def answered(self, status: int) -> None:
        if status in (502, 503, 504):
            self.unanswered(f"HTTP {status}")
            return
        declared, away = self._declared, self.away_seconds()
        self.failing_since, self._declared = None, False
        if declared:
            logger.warning("The Kubernetes API server answers again (it did not for %.0f s)", away)
            self.on_return()

    def unanswered(self, error: object) -> None:
        self.last_error = str(error) or type(error).__name__
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        if not self._declared and self.away_seconds() >= self.AWAY_SECONDS:
            self._declared = True
            logger.warning("The Kubernetes API server does not answer (%s); retrying until it does", self.last_error)

    def away_seconds(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    def report(self) -> dict[str, Any]:
        """What /healthz shows (kopf serves probe results with 200 whatever they say)."""
        if self.available:
            return {"available": True}
        return {"available": False, "awaySeconds": round(self.away_seconds(), 1), "lastError": self.last_error}


class RequestCounter:
    """Counts requests by verb: for /metrics, and for the benchmark's requests-per-reconcile; and whether
    the latest one was answered (shared by every client of one operator)."""

    def __init__(self, hook: Callable[[str], None] | None = None) -> None:
        self.by_verb: collections.Counter[str] = collections.Counter()
        self._hook = hook
        self.availability = Availability()

    def count(self, verb: str) -> None:
        self.by_verb[verb] += 1
        if self._hook is not None:
            self._hook(verb)

    @property
    def mutating(self) -> int:
        return sum(count for verb, count in self.by_verb.items() if verb in MUTATING)


class KubeApi:
    """The operator's requests, sent with aiohttp directly and (de)serialised with orjson.

    The generated client (``kubernetes.aio``) is used only to read the configuration (in-cluster, or a
    kubeconfig with its CA, client certificate, token or exec plugin). Its request path costs more than
    the request: a parameter walk, a recursive sanitising walk of every manifest, ``json`` both ways and
    wrappers per call; with a dozen applies per platform that was a third of the operator's CPU.
    """

    def __init__(self, configuration: k8s.Configuration, session: aiohttp.ClientSession,
                 counter: RequestCounter | None = None, host: str | None = None,
                 kubeconfig: str | None = None) -> None:
        self._configuration = configuration
        self._session = session
        self._base = configuration.host.rstrip("/")
        self._extra: dict[str, Any] = {}
        if configuration.tls_server_name:
            self._extra["server_hostname"] = configuration.tls_server_name
        if configuration.proxy:
            self._extra["proxy"] = configuration.proxy
            if configuration.proxy_headers:
                self._extra["proxy_headers"] = configuration.proxy_headers
        self._bearer = "BearerToken" in configuration.api_key or "authorization" in configuration.api_key
        self.counter = counter or RequestCounter()
        #: The host and kubeconfig given to :func:`connect`, so that a second client reaches the same server.
        self.host = host
        self.kubeconfig = kubeconfig
        #: Called before every write; raises :class:`NotLeading` when this replica may have lost the Lease.
        self.write_fence: Callable[[], None] | None = None

    async def close(self) -> None:
        await self._session.close()

    async def _headers(self, accept: str, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": FIELD_MANAGER}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self._bearer:
            # Asked every time: the in-cluster token is re-read when it rotates, a kubeconfig's exec plugin
            # runs again when its credential expires (the configuration's refresh hook does both).
            token = await self._configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
            if token:
                headers["Authorization"] = token
        return headers

    def _url(self, path: str, query: list[tuple[str, str]] | None) -> yarl.URL:
        text = self._base + path + ("?" + urlencode(query) if query else "")
        return yarl.URL(text, encoded=True)  # the paths are quoted already (paths.ResourceRef)

    async def _call(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None, accept: str = "application/json",
    ) -> dict[str, Any] | None:
        if method in MUTATING and self.write_fence is not None:
            self.write_fence()
        self.counter.count(method)
        headers = await self._headers(accept, content_type if body is not None else None)
        data = orjson.dumps(body) if body is not None else None
        try:
            async with self._session.request(method, self._url(path, query), headers=headers, data=data,
                                             timeout=_TIMEOUT, **self._extra) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counter.availability.unanswered(exc)
            raise
        self.counter.availability.answered(status)
        if status == 404 and method in ("GET", "DELETE"):
            return None
        if not 200 <= status < 300:
            raise _error(status, payload)
        parsed: dict[str, Any] = orjson.loads(payload) if payload else {}
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
        url = self._url(_collection(api_version, plural, namespace), query)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        try:
            opened = await self._session.get(url, headers=await self._headers(accept), timeout=timeout, **self._extra)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counter.availability.unanswered(exc)
            raise
        self.counter.availability.answered(opened.status)
        async with opened as raw:
            if raw.status != 200:
                raise _error(raw.status, await raw.read())
            yield _lines(raw.content)

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
        payload = orjson.loads(data)
        return ApiError(status, str(payload.get("reason") or status), str(payload.get("message") or ""))
    except (ValueError, AttributeError):  # not JSON, or JSON but not a Status object
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
    if host is not None:
        configuration.host = host
    elif kubeconfig is not None:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=configuration)
    # The TLS context exactly as the generated client builds it from the configuration (CA, client
    # certificate, verification switches).
    tls = RESTClientObject(configuration).ssl_context
    # trust_env would make aiohttp read ~/.netrc in a thread for every request; proxies for the API
    # server belong in the kubeconfig, not in the environment.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, ssl=tls), trust_env=False,
                                    read_bufsize=2**21)
    return KubeApi(configuration, session, counter, host, kubeconfig)
