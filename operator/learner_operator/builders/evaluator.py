"""The evaluator worker (same image, `learner-api evaluator`) and its metrics Service."""

from __future__ import annotations

from typing import Any

from learner_operator.builders import common as c
from learner_operator.builders import config

APP = "evaluator"
COMPONENT = "worker"


def pod_template(p: c.Platform) -> dict[str, Any]:
    return c.pod_template(
        # Long enough to finish (or cleanly abandon) the batch in flight on SIGTERM.
        p, APP, COMPONENT, metrics_port=c.EVALUATOR_METRICS_PORT, grace_seconds=60, container={
            "args": ["evaluator"],
            "ports": [{"name": "metrics", "containerPort": c.EVALUATOR_METRICS_PORT, "protocol": "TCP"}],
            # The consumer name in the Redis consumer group: unique and stable per pod.
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "ALERT_RULES_FILE", "value": f"{config.RULES_DIR}/{config.RULES_KEY}"}],
            "resources": c.resources(p.spec.evaluator.resources),
            "startupProbe": c.http_probe("/livez", "metrics", 2, 30),
            "readinessProbe": c.http_probe("/livez", "metrics", 10, 3),
            "livenessProbe": c.http_probe("/livez", "metrics", 10, 6),
        },
        # rules are read at start: a change rolls the pods (the hash), and a bad rule never gets this far
        mounts=[({"name": "alert-rules", "configMap": {"name": c.alert_rules_name(p)}},
                 {"name": "alert-rules", "mountPath": config.RULES_DIR, "readOnly": True})],
        annotations={c.ALERT_RULES_HASH_ANNOTATION: c.content_digest({"rules": config.alert_rules_yaml(p)})},
    )


def deployment(p: c.Platform, *, autoscaled: bool = False) -> c.Manifest:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": c.selector_labels(p, APP)},
        "revisionHistoryLimit": 5,
        "template": pod_template(p),
    }
    if not autoscaled:
        # With KEDA's ScaledObject in place, replicas is its HPA's field: setting it here would fight it.
        spec = {"replicas": p.spec.evaluator.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": c.metadata(p, c.evaluator_name(p), APP, COMPONENT),
        "spec": spec,
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
