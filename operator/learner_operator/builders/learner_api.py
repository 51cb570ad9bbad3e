"""learner-api: Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from learner_operator.builders import common as c

APP = "learner-api"
COMPONENT = "api"


def pod_template(p: c.Platform) -> dict[str, Any]:
    """No migrate init container: the migration Job runs `learner-api migrate` once per image before this
    template gets the image (builders.migration), and `learner-api serve` itself refuses to start, in one
    line, against a database that lacks a migration its image ships (learner_api.startup_checks), which
    is the check an init container would make, without giving the tables' owner's URL to every pod."""
    return c.pod_template(p, APP, COMPONENT, metrics_port=c.API_METRICS_PORT, grace_seconds=30, container={
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": c.API_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": c.API_METRICS_PORT, "protocol": "TCP"}],
        "resources": c.resources(p.spec.learner_api.resources),
        "startupProbe": c.http_probe("/livez", "http", 2, 30),
        "readinessProbe": c.http_probe("/readyz", "http", 5, 3),
        "livenessProbe": c.http_probe("/livez", "http", 10, 3),
    })


def deployment(p: c.Platform) -> c.Manifest:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": c.selector_labels(p, APP)},
        "revisionHistoryLimit": 5,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
        "template": pod_template(p),
    }
    if not p.spec.learner_api.autoscaling.enabled:
        # With the HPA on, replicas is the HPA's field: setting it here would fight the autoscaler.
        spec = {"replicas": p.spec.learner_api.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": c.metadata(p, c.api_name(p), APP, COMPONENT),
        "spec": spec,
    }


def service(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": c.metadata(p, c.api_name(p), APP, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": c.selector_labels(p, APP),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                      {"name": "metrics", "port": c.API_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def autoscaler(p: c.Platform) -> c.Manifest:
    scaling = p.spec.learner_api.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": c.metadata(p, c.api_name(p), APP, COMPONENT),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": c.api_name(p)},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization_percentage},
                },
            }],
        },
    }


def disruption_budget(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": c.metadata(p, c.api_name(p), APP, COMPONENT),
        "spec": {
            "minAvailable": p.spec.learner_api.pod_disruption_budget.min_available,
            "selector": {"matchLabels": c.selector_labels(p, APP)},
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
