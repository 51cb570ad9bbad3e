"""Where a kind lives in the REST API. Static on purpose: the operator only touches known kinds."""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import quote

_PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "ServiceMonitor": "servicemonitors",
    "Job": "jobs",
    "Pod": "pods",
    "TriggerAuthentication": "triggerauthentications",
    "ScaledObject": "scaledobjects",
    "LearnerPlatform": "learnerplatforms",
}


class ResourceRef(NamedTuple):
    """One namespaced object: enough to build its URL."""

    api_version: str
    plural: str
    namespace: str
    name: str

    def collection_path(self) -> str:
        prefix = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{quote(self.namespace, safe='')}/{self.plural}"

    def path(self, subresource: str = "") -> str:
        suffix = f"/{subresource}" if subresource else ""
        return f"{self.collection_path()}/{quote(self.name, safe='')}{suffix}"


def plural_of(kind: str) -> str:
    return _PLURALS[kind]


def ref_of(manifest: dict[str, Any]) -> ResourceRef:
    meta = manifest["metadata"]
    return ResourceRef(manifest["apiVersion"], plural_of(manifest["kind"]), meta["namespace"], meta["name"])
