"""Pure builders: a parsed LearnerPlatform in, the child manifests (plain dicts) out.

Nothing here talks to a cluster or formats YAML: ``children()`` is what the operator applies and
exactly what ``learner-operator render`` prints.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from learner_operator.builders import (
    autoscaling,
    canary,
    config,
    evaluator,
    learner_api,
    migration,
    network,
    observability,
)
from learner_operator.builders import common as c
from learner_operator.builders.common import (
    CONTAINER_SECRET_KEYS,
    OPTIONAL_SECRET_KEYS,
    REQUIRED_SECRET_KEYS,
    SECRET_DIGEST_KEYS,
    SECRET_HASH_ANNOTATION,
    CanaryPlan,
    Manifest,
    Platform,
    SecretNeed,
    secret_digest,
    secret_needs,
    unmet_secret_needs,
)
from learner_operator.models import FIELD_MANAGER, LearnerPlatformSpec


class ChildKind(NamedTuple):
    api_version: str
    kind: str
    plural: str


#: Every kind the operator may create, in the order they are applied: what a pod needs exists first.
CHILD_KINDS: tuple[ChildKind, ...] = (
    ChildKind("v1", "ServiceAccount", "serviceaccounts"),
    ChildKind("v1", "ConfigMap", "configmaps"),
    ChildKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ChildKind("v1", "Service", "services"),
    ChildKind("apps/v1", "Deployment", "deployments"),
    ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    ChildKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ChildKind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
    ChildKind("batch/v1", "Job", "jobs"),
    ChildKind(autoscaling.API_VERSION, autoscaling.TRIGGER_AUTHENTICATION, "triggerauthentications"),
    ChildKind(autoscaling.API_VERSION, autoscaling.SCALED_OBJECT, "scaledobjects"),
)
#: Children created once and never applied or pruned by the reconcile's diff: the migration Job (its pod
#: template is immutable, it runs once per image, and its TTL removes it; see learner_operator.migration).
ONE_SHOT_KINDS: frozenset[str] = frozenset({"Job"})
_ORDER = {kind.kind: index for index, kind in enumerate(CHILD_KINDS)}
#: Applied wave after wave, each wave's kinds at once: what the pods refer to (ServiceAccount, config,
#: network policy, Service) first, so that their first start finds it; then the workloads and what
#: refers to them (an HPA or PDB whose Deployment appears a moment later just waits for it). A
#: ScaledObject's TriggerAuthentication comes first, so that KEDA finds it when it reads the ScaledObject.
APPLY_WAVES: tuple[frozenset[str], ...] = (
    frozenset({"ServiceAccount", "ConfigMap", "NetworkPolicy", "Service", "TriggerAuthentication"}),
    frozenset({"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "ScaledObject"}),
)
_WITHOUT_KEDA = ("evaluator autoscaling is unavailable, so the evaluator runs spec.evaluator.replicas: install KEDA "
                 "2.12 or newer (keda.sh/v1alpha1, https://keda.sh/docs/latest/deploy/), or set "
                 "spec.evaluator.autoscaling.enabled to false")
#: Kinds that exist only where an add-on installed their CRD, and what to do when they are missing.
#: Kinds with the same advice are reported together.
OPTIONAL_KINDS: dict[str, str] = {
    "ServiceMonitor": "install the Prometheus Operator's CRDs (monitoring.coreos.com/v1), "
                      "or set spec.observability.serviceMonitor to false",
    autoscaling.TRIGGER_AUTHENTICATION: _WITHOUT_KEDA,
    autoscaling.SCALED_OBJECT: _WITHOUT_KEDA,
}


def children(p: Platform, *, unserved: Collection[str] = ()) -> list[Manifest]:
    """All children the spec asks for, less the optional kinds in ``unserved`` (those the cluster does not
    serve). Whatever is missing from this list gets pruned.

    Without KEDA's kinds the evaluator keeps its fixed replica count; with them its Deployment leaves
    ``replicas`` to the HPA that KEDA makes for the ScaledObject.
    """
    spec = p.spec
    autoscaled = autoscaling.wanted(spec) and not autoscaling.KINDS & set(unserved)
    api, ev, gw = c.api_name(p), c.evaluator_name(p), c.pushgateway_name(p)
    workloads = c.serving(p)  # on the image they may run now: the spec's, once its migration succeeded
    out: list[Manifest] = [
        config.config_map(p),
        config.service_account(p, api, learner_api.APP, learner_api.COMPONENT),
        learner_api.deployment(workloads),
        learner_api.service(p),
    ]
    if p.canary is not None:
        out.append(canary.deployment(p, p.canary))
    if spec.learner_api.autoscaling.enabled:
        out.append(learner_api.autoscaler(p))
    if spec.learner_api.pod_disruption_budget.enabled:
        out.append(learner_api.disruption_budget(p))
    if spec.network_policy.enabled:
        out.append(network.policy(p, api, learner_api.APP, learner_api.COMPONENT,
                                  ingress_port=c.API_PORT, egress=True, metrics_port=c.API_METRICS_PORT,
                                  metrics_from=network.metrics_peers(p), also=(migration.APP,)))
    if spec.evaluator.enabled:
        out += [
            config.service_account(p, ev, evaluator.APP, evaluator.COMPONENT),
            config.alert_rules_config_map(p),
            evaluator.deployment(workloads, autoscaled=autoscaled),
            evaluator.metrics_service(p),
        ]
        if autoscaled:
            out += [autoscaling.trigger_authentication(p), autoscaling.scaled_object(p)]
        if spec.network_policy.enabled:
            out.append(network.policy(p, ev, evaluator.APP, evaluator.COMPONENT,
                                      ingress_port=c.EVALUATOR_METRICS_PORT, egress=True))
    gateway = spec.observability.pushgateway
    if gateway.enabled and not gateway.url:
        out += [
            config.service_account(p, gw, observability.APP, observability.COMPONENT),
            observability.pushgateway_deployment(p),
            observability.pushgateway_service(p),
        ]
        if spec.network_policy.enabled:
            out.append(network.policy(p, gw, observability.APP, observability.COMPONENT,
                                      ingress_port=c.PUSHGATEWAY_PORT, egress=False))
    if spec.observability.service_monitor:
        out.append(observability.service_monitor(p))
    return sorted((m for m in out if m["kind"] not in unserved), key=lambda m: _ORDER[m["kind"]])


#: What the cluster must serve for the evaluator's autoscaling.
AUTOSCALER_KINDS: tuple[ChildKind, ...] = tuple(kind for kind in CHILD_KINDS if kind.kind in autoscaling.KINDS)


def wants_autoscaler(spec: LearnerPlatformSpec) -> bool:
    """Does the spec ask for the evaluator's KEDA autoscaling (whether the cluster serves KEDA or not)?"""
    return autoscaling.wanted(spec)


__all__ = [
    "APPLY_WAVES",
    "AUTOSCALER_KINDS",
    "CHILD_KINDS",
    "CONTAINER_SECRET_KEYS",
    "FIELD_MANAGER",
    "ONE_SHOT_KINDS",
    "OPTIONAL_KINDS",
    "OPTIONAL_SECRET_KEYS",
    "REQUIRED_SECRET_KEYS",
    "SECRET_DIGEST_KEYS",
    "SECRET_HASH_ANNOTATION",
    "CanaryPlan",
    "ChildKind",
    "Manifest",
    "Platform",
    "SecretNeed",
    "children",
    "migration",
    "secret_digest",
    "secret_needs",
    "unmet_secret_needs",
    "wants_autoscaler",
]
