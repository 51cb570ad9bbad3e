"""Optional metrics wiring: a ServiceMonitor, and a Pushgateway run next to the platform."""

from __future__ import annotations

from learner_operator.builders import common as c

APP = "pushgateway"
COMPONENT = "metrics"


def service_monitor(p: c.Platform) -> c.Manifest:
    """Scrapes learner-api and the evaluator of this platform, each on its `metrics` port."""
    interval = p.spec.observability.scrape_interval
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": c.metadata(p, p.name, "learner-platform", COMPONENT),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/instance": p.name,
                                         "app.kubernetes.io/part-of": c.PART_OF}},
            "namespaceSelector": {"matchNames": [p.namespace]},
            "endpoints": [
                {"port": "metrics", "path": "/metrics", "interval": interval},
            ],
        },
    }


def pushgateway_deployment(p: c.Platform) -> c.Manifest:
    volume, mount = c.tmp_volume()
    probe = {"httpGet": {"path": "/-/ready", "port": "http"}, "periodSeconds": 10}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": c.metadata(p, c.pushgateway_name(p), APP, COMPONENT),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": c.selector_labels(p, APP)},
            "template": {
                "metadata": {"labels": c.labels(p, APP, COMPONENT)},
                "spec": {
                    "serviceAccountName": c.pushgateway_name(p),
                    "automountServiceAccountToken": False,
                    "securityContext": c.pod_security_context(),
                    "containers": [{
                        "name": APP,
                        "image": p.spec.observability.pushgateway.image,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "ports": [{"name": "http", "containerPort": c.PUSHGATEWAY_PORT, "protocol": "TCP"}],
                        "readinessProbe": probe,
                        "livenessProbe": {**probe, "httpGet": {"path": "/-/healthy", "port": "http"}},
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                      "limits": {"cpu": "100m", "memory": "64Mi"}},
                        "securityContext": c.container_security_context(),
                        "volumeMounts": [mount],
                    }],
                    "volumes": [volume],
                },
            },
        },
    }


def pushgateway_service(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": c.metadata(p, c.pushgateway_name(p), APP, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": c.selector_labels(p, APP),
            "ports": [{"name": "http", "port": c.PUSHGATEWAY_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
