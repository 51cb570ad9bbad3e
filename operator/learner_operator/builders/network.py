"""NetworkPolicies: each component may receive and send only what it needs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from learner_operator.builders import common as c


def _dns() -> dict[str, Any]:
    return {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}


def _tcp(*ports: int) -> dict[str, Any]:
    return {"ports": [{"port": port, "protocol": "TCP"} for port in ports]}


def _pushgateway_port(p: c.Platform) -> int | None:
    url = c.pushgateway_url(p)
    if not url:
        return None
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


#: The operator's pods, as the chart labels them: it reads learner-api's metrics to judge a canary.
OPERATOR_LABELS = {"app.kubernetes.io/name": "learner-operator"}


def metrics_peers(p: c.Platform) -> list[dict[str, Any]]:
    """Who may read learner-api's metrics port: the operator (in whatever namespace it runs) and the pods of the
    namespaces named in spec.networkPolicy.metricsNamespaces (Prometheus')."""
    peers: list[dict[str, Any]] = [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict(OPERATOR_LABELS)}}]
    peers += [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
              for namespace in p.spec.network_policy.metrics_namespaces]
    return peers


def policy(p: c.Platform, name: str, app: str, component: str, *, ingress_port: int, egress: bool,
           metrics_port: int | None = None, metrics_from: list[dict[str, Any]] | None = None,
           also: tuple[str, ...] = ()) -> c.Manifest:
    """Ingress on the served port from anywhere (learners come through an ingress controller, Prometheus
    from its own namespace), and on the metrics port when it is another (from ``metrics_from`` only, when
    given); egress to DNS and to the managed databases' ports only. ``also``: other apps' pods that need the
    same egress (learner-api's migration Job, which a default-deny namespace would otherwise cut off from the
    database)."""
    selector: dict[str, Any] = {"matchLabels": c.selector_labels(p, app)}
    if also:
        selector = {"matchLabels": {"app.kubernetes.io/instance": p.name}, "matchExpressions": [
            {"key": "app.kubernetes.io/name", "operator": "In", "values": [app, *also]}]}
    egress_rules: list[dict[str, Any]] = []
    if egress:
        egress_rules = [_dns(), _tcp(*p.spec.network_policy.egress_ports)]
        if (port := _pushgateway_port(p)) is not None and app == "evaluator":
            egress_rules.append(_tcp(port))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": c.metadata(p, name, app, component),
        "spec": {
            "podSelector": selector,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [_tcp(ingress_port)] + ([] if metrics_port is None else [
                {**_tcp(metrics_port), **({"from": metrics_from} if metrics_from is not None else {})}]),
            "egress": egress_rules,
        },
    }
