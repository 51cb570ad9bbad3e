"""The evaluator worker (same image, `learner-api evaluator`) and its metrics Service."""

from __future__ import annotations

from typing import Any

from learner_operator.builders import common as c

APP = "evaluator"
COMPONENT = "worker"


def pod_template(p: c.Platform) -> dict[str, Any]:
    return c.pod_template(
        # Long enough to finish (or cleanly abandon) the batch in flight on SIGTERM.
        p, APP, COMPONENT, metrics_port=c.EVALUATOR_METRICS_PORT, grace_seconds=60, container={
            "args": ["evaluator"],
            "ports": [{"name": "metrics", "containerPort": c.EVALUATOR_METRICS_PORT, "protocol": "TCP"}],
            # The consumer name in the Redis consumer group: unique and stable per pod.
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "resources": c.resources(p.spec.evaluator.resources),
            "startupProbe": c.http_probe("/livez", "metrics", 2, 30),
            "readinessProbe": c.http_probe("/livez", "metrics", 10, 3),
            "livenessProbe": c.http_probe("/livez", "metrics", 10, 6),
        },
    )


def deployment(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": c.metadata(p, c.evaluator_name(p), APP, COMPONENT),
        "spec": {
            "replicas": p.spec.evaluator.replicas,
            "selector": {"matchLabels": c.selector_labels(p, APP)},
            "revisionHistoryLimit": 5,
            "template": pod_template(p),
        },
    }


def metrics_service(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": c.metadata(p, c.evaluator_name(p), APP, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": c.selector_labels(p, APP),
            "ports": [{"name": "metrics", "port": c.EVALUATOR_METRICS_PORT, "targetPort": "metrics",
                       "protocol": "TCP"}],
        },
    }
