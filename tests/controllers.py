"""What Kubernetes' controllers write, for tests that play them (no controller runs on the emulator,
and a real control plane without kube-controller-manager has none either)."""

from __future__ import annotations

from typing import Any


def deployment_status(deployment: dict[str, Any], ready: int | None = None) -> dict[str, Any]:
    """The Deployment controller's status once ``ready`` replicas (all, by default) of the current template run."""
    replicas = int(deployment["spec"].get("replicas", 1))
    ready = replicas if ready is None else ready
    return {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
        "conditions": [{"type": "Available", "status": "True" if ready >= replicas else "False",
                        "reason": "MinimumReplicasAvailable"}],
    }


def autoscaler_first_sync(hpa: dict[str, Any], replicas: int) -> int | None:
    """The replicas the HorizontalPodAutoscaler controller sets on its first sync of ``hpa`` (one sync period,
    15 s by default, after the HPA is made) when its target has ``replicas``; None: it leaves them. Without
    metrics (no metrics-server) it still moves them into [minReplicas, maxReplicas]; 0 means scaling is off."""
    spec = hpa.get("spec") or {}
    low, high = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
    if replicas == 0 or low <= replicas <= high:
        return None
    return low if replicas < low else high
