"""learner-api's own Prometheus metrics, read straight from its pods' metrics port (no Prometheus needed).

The operator reads them only while a canary rollout is judged: one GET of ``http://<pod IP>:<metrics port>/
metrics`` per pod and analysis. The port is the pod's container port named ``metrics``; the NetworkPolicy
lets the operator's pods (and the namespaces in spec.networkPolicy.metricsNamespaces) reach it, nobody else.
No RBAC beyond listing pods: the request goes to the pod, not through the API server's proxy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

#: Requests that say nothing about the build: kubelet probes and scrapes.
IGNORED_ROUTES = frozenset({"/livez", "/readyz", "/metrics"})
REQUESTS, LATENCY = "http_requests", "http_request_duration_seconds"


@dataclasses.dataclass(frozen=True)
class PodMetrics:
    """Cumulative counts since the pod started (all routes but probes): requests, 5xx answers, and the latency
    histogram's cumulative buckets as (upper bound in seconds, count), +Inf last."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()

    def minus(self, earlier: PodMetrics | None) -> PodMetrics:
        """What happened since ``earlier`` (a restarted pod's counters start again: then everything counts)."""
        if earlier is None or earlier.requests > self.requests:
            return self
        before = dict(earlier.buckets)
        return PodMetrics(self.requests - earlier.requests, self.errors - earlier.errors,
                          tuple((le, count - before.get(le, 0.0)) for le, count in self.buckets))


def total(samples: Iterable[PodMetrics]) -> PodMetrics:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for sample in samples:
        requests += sample.requests
        errors += sample.errors
        for le, count in sample.buckets:
            buckets[le] = buckets.get(le, 0.0) + count
    return PodMetrics(requests, errors, tuple(sorted(buckets.items())))


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in (seconds; 0 without data).
    A rank in the +Inf bucket answers the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return 0.0
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


def parse(text: str) -> PodMetrics:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS, LATENCY):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("route") in IGNORED_ROUTES:
                continue
            if family.name == REQUESTS and sample.name == f"{REQUESTS}_total":
                requests += sample.value
                if labels.get("status") == "5xx":
                    errors += sample.value
            elif family.name == LATENCY and sample.name == f"{LATENCY}_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return PodMetrics(requests, errors, tuple(sorted(buckets.items())))


def metrics_url(pod: dict[str, Any]) -> str | None:
    """Where a running pod serves /metrics: its IP and its container port named ``metrics``; None if it has none."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or status.get("phase") != "Running":
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "metrics" and port.get("containerPort"):
                host = f"[{ip}]" if ":" in str(ip) else ip
                return f"http://{host}:{port['containerPort']}/metrics"
    return None


class Scraper:
    """One HTTP session for every scrape of this operator (connections kept alive between analyses)."""

    def __init__(self, timeout: float = 3.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _one(self, url: str) -> PodMetrics | str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    return f"{url}: HTTP {response.status}"
                return parse(await response.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"{url}: {type(exc).__name__} {exc}".rstrip()

    async def pods(self, pods: list[dict[str, Any]]) -> tuple[dict[str, PodMetrics], list[str]]:
        """Each reachable pod's metrics by pod name, and what could not be read (one line per pod)."""
        targets = [(str(pod["metadata"]["name"]), url) for pod in pods if (url := metrics_url(pod))]
        answers = await asyncio.gather(*(self._one(url) for _, url in targets))
        found: dict[str, PodMetrics] = {}
        problems: list[str] = []
        for (name, _), answer in zip(targets, answers, strict=True):
            if isinstance(answer, str):
                problems.append(f"pod {name}: {answer}")
            else:
                found[name] = answer
        return found, problems
