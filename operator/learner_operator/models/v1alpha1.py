"""The ``learner.dev/v1alpha1`` LearnerPlatform API: the one source of truth.

The CRD's openAPIV3Schema is generated from these models (``learner-operator crd``), and the
operator parses every custom resource with them at the handler's edge. Defaults are the seed's
(``../shared/seeds``): two API replicas, an HPA from 2 to 10 at 70% CPU, requests 100m/256Mi and
limits 500m/512Mi, the ``ai-platform-secrets`` Secret, tenant mode on.

Rules that a person can get wrong are written twice on purpose: as CEL ``x-kubernetes-validations``
so that the API server refuses them at admission, and as pydantic validators so that a resource that
slipped past an older CRD is reported as ``InvalidSpec`` instead of crashing a reconcile.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema, field_validator, model_validator
from pydantic.alias_generators import to_camel

from learner_operator.models import quantity
from learner_operator.models.quantity import parse_quantity
from learner_operator.models.rollout import RolloutSpec, RolloutStatus

GROUP = "learner.dev"
VERSION = "v1alpha1"
KIND = "LearnerPlatform"
PLURAL = "learnerplatforms"
SINGULAR = "learnerplatform"
SHORT_NAMES = ("lp",)
API_VERSION = f"{GROUP}/{VERSION}"
#: Who the operator is to the API server: its server-side apply field manager.
FIELD_MANAGER = "learner-platform-operator"

#: The longest CR name whose derived child names ("<name>-learner-api", "<name>-pushgateway")
#: still fit a DNS-1035 label (63 characters) with room for the ReplicaSet/pod suffixes.
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain: what Kubernetes accepts as a Secret's name.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
IMAGE_REPOSITORY_PATTERN = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
IMAGE_TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
IMAGE_DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"
#: A quantity the CRD admits: Kubernetes' own pattern without the minus sign (a pod refuses negative
#: resources), parsed by Kubernetes' grammar (models/quantity.py; CEL's isQuantity() at admission).
QUANTITY_PATTERN = quantity.PATTERN.replace(r"^(\+|-)?", r"^\+?", 1)
QUANTITY_MAX_LENGTH = 64
#: The largest quantity admitted: what resource.Quantity keeps without capping (2^63-1).
QUANTITY_MAX = "9223372036854775807"
#: A subset of the Prometheus Operator's Duration pattern (units once each, largest first), so that a
#: ServiceMonitor built from it is admitted by its CRD.
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"
#: Printable ASCII without spaces: the same set for Go's regexp (the API server), Rust's (pydantic) and Python's.
URL_PATTERN = r"^(https?://[!-~]+)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_QUANTITY_RULE = {
    "rule": f"type(self) == int ? self >= 0 : (isQuantity(self) && "
            f"quantity(self).compareTo(quantity('{QUANTITY_MAX}')) <= 0)",
    "message": f"must be a Kubernetes quantity from 0 to {QUANTITY_MAX}, e.g. 100m, 0.5, 256Mi or 1Gi",
    "reason": "FieldValueInvalid",
}


def _quantity(value: Any) -> str:
    """A quantity as admission checks it: the pattern, Kubernetes' parser, and the bounds a pod accepts."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("a quantity is a string such as 100m or 256Mi, or a whole number")
    if isinstance(value, str) and (len(value) > QUANTITY_MAX_LENGTH or not _QUANTITY_RE.fullmatch(value)):
        raise ValueError(f"{value[:QUANTITY_MAX_LENGTH]!r} is not a Kubernetes quantity of at most "
                         f"{QUANTITY_MAX_LENGTH} characters (examples: 100m, 0.5, 256Mi, 1Gi)")
    parsed = parse_quantity(value)
    if not 0 <= parsed <= Decimal(QUANTITY_MAX):
        raise ValueError(f"{value} is out of range: {_QUANTITY_RULE['message']}")
    return str(value)


#: Kubernetes quantities accept both `cpu: 1` and `cpu: "500m"`; kept as strings after parsing.
Quantity = Annotated[
    str,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "pattern": QUANTITY_PATTERN, "maxLength": QUANTITY_MAX_LENGTH,
                    "x-kubernetes-validations": [_QUANTITY_RULE]}),
]


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, not ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ResourceList(_Model):
    cpu: Quantity = Field(description="CPU, e.g. 100m or 1.")
    memory: Quantity = Field(description="Memory, e.g. 256Mi or 1Gi.")

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _valid_quantity(cls, value: Any) -> str:
        return _quantity(value)


def _within_limit_rule(name: str) -> dict[str, Any]:
    """requests <= limits with the Kubernetes CEL quantity library (CRD rules may use it on 1.30+).

    Each of the four int/string cases on its own: ``quantity(string(x))`` would be simpler, but the API
    server cannot estimate the size of what ``string()`` returns, and refuses the CRD for the rule's
    estimated cost (a quantity() call costs a tenth of its argument's largest size)."""
    request, limit = f"self.requests.{name}", f"self.limits.{name}"
    return {
        "rule": f"type({request}) == int ? (type({limit}) == int ? {request} <= {limit} : "
                f"quantity({limit}).sub({request}).sign() >= 0) : (type({limit}) == int ? "
                f"quantity({request}).sub({limit}).sign() <= 0 : "
                f"quantity({request}).compareTo(quantity({limit})) <= 0)",
        "message": f"resources.requests.{name} must be less than or equal to resources.limits.{name}",
        "reason": "FieldValueInvalid",
    }


class ResourceRequirements(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _within_limit_rule("cpu"), _within_limit_rule("memory")]})

    requests: ResourceList = Field(description="What the scheduler reserves for each pod.")
    limits: ResourceList = Field(description="The most each pod may use.")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourceRequirements:
        for name in ("cpu", "memory"):
            request = parse_quantity(getattr(self.requests, name))
            limit = parse_quantity(getattr(self.limits, name))
            if request > limit:
                raise ValueError(
                    f"resources.requests.{name} must be less than or equal to resources.limits.{name} "
                    f"({getattr(self.requests, name)} is above {getattr(self.limits, name)}); Kubernetes refuses "
                    "such pods"
                )
        return self


def _api_resources() -> ResourceRequirements:
    return ResourceRequirements(
        requests=ResourceList(cpu="100m", memory="256Mi"), limits=ResourceList(cpu="500m", memory="512Mi")
    )


def _evaluator_resources() -> ResourceRequirements:
    return ResourceRequirements(
        requests=ResourceList(cpu="50m", memory="128Mi"), limits=ResourceList(cpu="250m", memory="256Mi")
    )


class ImageSpec(_Model):
    repository: str = Field(
        default="ghcr.io/ai-platform/learner-api", pattern=IMAGE_REPOSITORY_PATTERN, max_length=255,
        description="The learner-api image repository; the evaluator runs from the same image.",
    )
    tag: str = Field(
        pattern=IMAGE_TAG_PATTERN, description="The image tag: the git SHA the image was built from."
    )
    digest: Annotated[str | None, WithJsonSchema({"type": "string", "pattern": IMAGE_DIGEST_PATTERN})] = Field(
        default=None, pattern=IMAGE_DIGEST_PATTERN,
        description="Pins the image: repository@digest is run instead of repository:tag (the tag still labels it).",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(default="IfNotPresent")


class SecretRef(_Model):
    name: str = Field(
        default="ai-platform-secrets", pattern=SECRET_NAME_PATTERN, max_length=253,
        description="A Secret in the same namespace holding DATABASE_URL and REDIS_URL. "
        "The operator reads its keys, never copies its values.",
    )


class AutoscalingSpec(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
        "reason": "FieldValueInvalid",
    }]})

    enabled: bool = Field(default=True, description="Scale learner-api with a HorizontalPodAutoscaler.")
    min_replicas: int = Field(default=2, ge=1, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    target_cpu_utilization_percentage: int = Field(
        default=70, ge=1, le=100, alias="targetCPUUtilizationPercentage",
        description="Average CPU use, in percent of the request, that the HPA aims for.",
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.minReplicas ({self.min_replicas}) must be less than or equal to "
                f"autoscaling.maxReplicas ({self.max_replicas})"
            )
        return self


class PodDisruptionBudgetSpec(_Model):
    enabled: bool = True
    min_available: int = Field(default=1, ge=0, le=1000, description="Pods kept up during voluntary evictions.")


_PDB_RULE = (
    "!self.podDisruptionBudget.enabled || self.podDisruptionBudget.minAvailable < "
    "(self.autoscaling.enabled ? self.autoscaling.minReplicas : self.replicas)"
)
_PDB_MESSAGE = (
    "podDisruptionBudget.minAvailable must be lower than the smallest replica count "
    "(autoscaling.minReplicas, or replicas without autoscaling), or node drains can never evict a pod"
)


class LearnerApiSpec(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": _PDB_RULE, "message": _PDB_MESSAGE, "reason": "FieldValueInvalid",
    }]})

    replicas: int = Field(default=2, ge=0, le=1000, description="Used only when autoscaling is off.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    resources: ResourceRequirements = Field(default_factory=_api_resources)
    pod_disruption_budget: PodDisruptionBudgetSpec = Field(default_factory=PodDisruptionBudgetSpec)

    @property
    def min_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling.enabled else self.replicas

    @model_validator(mode="after")
    def _pdb_allows_eviction(self) -> LearnerApiSpec:
        pdb = self.pod_disruption_budget
        if pdb.enabled and pdb.min_available >= self.min_replicas:
            raise ValueError(f"{_PDB_MESSAGE} (minAvailable {pdb.min_available}, replicas {self.min_replicas})")
        return self


#: What the evaluator can measure (learner_api.evaluator.rules.SIGNALS; a test keeps the two equal).
AlertSignal = Literal["ingest_lag_seconds", "pending_entries", "stream_lag_entries", "dead_letters",
                      "seconds_since_progress", "failed_purchases_1h", "unfulfilled_purchases"]
OptionalNumber = Annotated[float | None, Field(allow_inf_nan=False), WithJsonSchema({"type": "number"})]


#: Prometheus' label names, which Alertmanager also requires of annotation names.
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
#: Label names the evaluator sets on every alert itself (learner_api.evaluator.alerting).
EVALUATOR_LABELS = ("alertname", "tenant")
# The rules become one ConfigMap (builders/config.py), and the API server refuses a ConfigMap whose data
# exceeds 1 MiB (1,048,576 bytes), failing every reconcile; these bounds keep the largest spec the CRD admits
# under it, so that the user hears "too many" or "too long" at `kubectl apply` instead. The worst case, as
# PyYAML writes it (tests/test_builders.py measures it): each character of a value may become a 10-byte
# escape (\U0010FFFF), plus line folding, so a 63-character label value takes at most ~701 bytes and a
# 200-character annotation ~2,173; names are ASCII (their pattern), at most 63 characters. One rule: alert
# name, signal, threshold and `for` ~200 bytes + 8 labels x (63 + 701) + 4 annotations x (63 + 2,173)
# ~ 15,256 bytes; 50 rules ~ 762,800 bytes (measured: 772,237), 74% of 1 MiB. The map bounds also keep the
# CEL rules over the names affordable: over a map without maxProperties the API server estimates their
# cost too high (hundreds of thousands of entries fit in one request).
ALERT_RULES_MAX = 50
ALERT_LABELS_MAX = 8
ALERT_ANNOTATIONS_MAX = 4
ALERT_NAME_MAX = 63
ALERT_LABEL_VALUE_MAX = 63
ALERT_ANNOTATION_VALUE_MAX = 200
_LABEL_NAMES_MESSAGE = (f"alert rule label names must be Prometheus label names ({LABEL_NAME_PATTERN}) of at most "
                        f"{ALERT_NAME_MAX} characters, not starting with __ (reserved for Prometheus)")
_EVALUATOR_LABELS_MESSAGE = "alert rule labels must not set alertname or tenant: the evaluator sets them on every alert"
_ANNOTATION_NAMES_MESSAGE = (f"alert rule annotation names must match {LABEL_NAME_PATTERN} (Alertmanager refuses "
                             f"others) and have at most {ALERT_NAME_MAX} characters")
_LABEL_RULES: list[JsonValue] = [
    {"rule": f"self.all(k, size(k) <= {ALERT_NAME_MAX} && k.matches('{LABEL_NAME_PATTERN}') && !k.startsWith('__'))",
     "message": _LABEL_NAMES_MESSAGE, "reason": "FieldValueInvalid"},
    {"rule": " && ".join(f"!('{name}' in self)" for name in EVALUATOR_LABELS),
     "message": _EVALUATOR_LABELS_MESSAGE, "reason": "FieldValueForbidden"},
]
_ANNOTATION_RULES: list[JsonValue] = [
    {"rule": f"self.all(k, size(k) <= {ALERT_NAME_MAX} && k.matches('{LABEL_NAME_PATTERN}'))",
     "message": _ANNOTATION_NAMES_MESSAGE, "reason": "FieldValueInvalid"},
]
_LABEL_NAME_RE = re.compile(LABEL_NAME_PATTERN)


class AlertRule(_Model):
    """One evaluator alert rule; the same shape as the evaluator's rule file."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "has(self.above) != has(self.below)",
        "message": "an alert rule needs exactly one of above or below",
        "reason": "FieldValueInvalid",
    }]})

    alert: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=100, description="The alert's name.")
    signal: AlertSignal = Field(description="What to measure (per-tenant signals alert once per tenant).")
    above: OptionalNumber = Field(default=None, description="Active while the signal is above this.")
    below: OptionalNumber = Field(default=None, description="Active while the signal is below this.")
    for_: str = Field(default="0s", alias="for", pattern=r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$", min_length=2,
                      max_length=20, description="How long it must stay active before it fires, e.g. 5m.")
    labels: dict[str, Annotated[str, Field(max_length=ALERT_LABEL_VALUE_MAX)]] = Field(
        default_factory=dict, max_length=ALERT_LABELS_MAX, description="Extra labels, e.g. severity.",
        json_schema_extra={"x-kubernetes-validations": _LABEL_RULES},
    )
    annotations: dict[str, Annotated[str, Field(max_length=ALERT_ANNOTATION_VALUE_MAX)]] = Field(
        default_factory=dict, max_length=ALERT_ANNOTATIONS_MAX,
        description="summary, runbook...; {{ $value }} and {{ $labels.tenant }} are filled in.",
        json_schema_extra={"x-kubernetes-validations": _ANNOTATION_RULES},
    )

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if len(name) > ALERT_NAME_MAX or not _LABEL_NAME_RE.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"{_LABEL_NAMES_MESSAGE} ({name[:ALERT_NAME_MAX + 1]!r})")
            if name in EVALUATOR_LABELS:
                raise ValueError(f"{_EVALUATOR_LABELS_MESSAGE} ({name!r})")
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotation_names(cls, annotations: dict[str, str]) -> dict[str, str]:
        for name in annotations:
            if len(name) > ALERT_NAME_MAX or not _LABEL_NAME_RE.fullmatch(name):
                raise ValueError(f"{_ANNOTATION_NAMES_MESSAGE} ({name[:ALERT_NAME_MAX + 1]!r})")
        return annotations

    @model_validator(mode="after")
    def _one_threshold(self) -> AlertRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("an alert rule needs exactly one of above or below")
        return self


class EvaluatorAutoscalingSpec(_Model):
    """The evaluator scaled on progress lag by KEDA; off by default (it needs KEDA, and REDIS_ADDRESS in the Secret)."""

    # Never below one replica (no scaling to zero): the evaluator also runs the alert rules, which must
    # keep running when nobody sends progress.

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "evaluator.autoscaling.minReplicas must be less than or equal to evaluator.autoscaling.maxReplicas",
        "reason": "FieldValueInvalid",
    }]})

    enabled: bool = Field(
        default=False, description="Scale the evaluator on progress lag with a KEDA ScaledObject (KEDA 2.12+); "
        "where the cluster does not serve KEDA's API, spec.evaluator.replicas applies and a condition says so.",
    )
    min_replicas: int = Field(default=1, ge=1, le=100)
    max_replicas: int = Field(default=10, ge=1, le=100)
    target_lag_per_replica: int = Field(
        default=1000, ge=1, le=10_000_000,
        description="Progress entries not yet read by the evaluator's consumer group (all shards together) "
        "per replica that KEDA aims for.",
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> EvaluatorAutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"evaluator.autoscaling.minReplicas ({self.min_replicas}) must be less than or equal to "
                f"evaluator.autoscaling.maxReplicas ({self.max_replicas})"
            )
        return self


class EvaluatorSpec(_Model):
    enabled: bool = Field(default=True, description="Run the evaluator worker (progress pipeline and alerts).")
    replicas: int = Field(default=1, ge=0, le=100,
                          description="Used unless autoscaling is on and the cluster serves KEDA's API.")
    autoscaling: EvaluatorAutoscalingSpec = Field(default_factory=EvaluatorAutoscalingSpec)
    resources: ResourceRequirements = Field(default_factory=_evaluator_resources)
    alert_rules: list[AlertRule] = Field(
        default_factory=list, max_length=ALERT_RULES_MAX,
        description="The evaluator's alert rules; empty means the defaults (ingest lag, dead letters, purchases).",
        # a map keyed by name: the API server refuses two rules of one name, as the evaluator does
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["alert"]},
    )

    @field_validator("alert_rules")
    @classmethod
    def _unique_names(cls, rules: list[AlertRule]) -> list[AlertRule]:
        names = [rule.alert for rule in rules]
        if dupes := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"alert rule {dupes[0]!r} is defined twice (rule names are unique)")
        return rules


class PushgatewaySpec(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!self.enabled || self.url != '' || self.image != ''",
        "message": "pushgateway needs either url (an existing Pushgateway) or image (one the operator runs)",
        "reason": "FieldValueRequired",
    }]})

    enabled: bool = Field(default=False, description="Push evaluator metrics where scraping cannot reach.")
    url: str = Field(
        default="", pattern=URL_PATTERN, max_length=2048,
        description="An existing Pushgateway; empty means the operator runs one next to the platform.",
    )
    image: str = Field(default="quay.io/prometheus/pushgateway:v1.11.1", pattern=r"^[!-~]*$", max_length=512,
                       description="The Pushgateway image the operator runs when url is empty.")

    @model_validator(mode="after")
    def _url_or_image(self) -> PushgatewaySpec:
        if self.enabled and not self.url and not self.image:
            raise ValueError("pushgateway needs either url (an existing Pushgateway) or image (one the operator runs)")
        return self


class ObservabilitySpec(_Model):
    service_monitor: bool = Field(
        default=False, description="Create a ServiceMonitor (needs the Prometheus Operator's CRDs)."
    )
    scrape_interval: str = Field(default="30s", pattern=DURATION_PATTERN, min_length=2, max_length=32)
    pushgateway: PushgatewaySpec = Field(default_factory=PushgatewaySpec)


class NetworkPolicySpec(_Model):
    enabled: bool = Field(default=True, description="Allow only the traffic the platform needs.")
    egress_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [5432, 6379, 6380], max_length=32,
        description="TCP ports the pods may reach outside the cluster: managed PostgreSQL and Redis.",
    )
    metrics_namespaces: list[Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]] = Field(
        default_factory=lambda: ["monitoring"], max_length=16,
        description="Namespaces whose pods (Prometheus) may read learner-api's metrics port, beside the operator.",
    )


class MigrationSpec(_Model):
    """The migration Job the operator runs (``learner-api migrate``) before each new image rolls out."""

    active_deadline_seconds: int = Field(
        default=900, ge=30, le=86400,
        description="How long one migration may run before its Job is stopped and counted as failed.",
    )
    backoff_limit: int = Field(
        default=2, ge=0, le=10,
        description="Retries of a failed migration pod before the Job fails (each run is all-or-nothing).",
    )


class RedisSpec(_Model):
    cluster: bool = Field(
        default=False, description="REDIS_URL is a Redis Cluster (ElastiCache cluster mode, Memorystore for "
        "Redis Cluster...): the pods get REDIS_CLUSTER=true, and the evaluator's autoscaler reads every shard.",
    )
    progress_stream_shards: int = Field(
        default=12, ge=1, le=1024,
        description="Progress streams on a cluster (PROGRESS_STREAM_SHARDS); only ever increase it. "
        "Unused on one Redis server, which always has one stream.",
    )


class LearnerPlatformSpec(_Model):
    paused: bool = Field(default=False, description="Stop all writes to the children (for maintenance).")
    image: ImageSpec
    environment: Literal["production", "staging", "development"] = Field(
        default="production", description="Passed to the pods as NODE_ENV."
    )
    tenant_mode: Literal["enabled", "disabled"] = Field(default="enabled", description="Passed as TENANT_MODE.")
    secret_ref: SecretRef = Field(default_factory=SecretRef)
    learner_api: LearnerApiSpec = Field(default_factory=LearnerApiSpec)
    evaluator: EvaluatorSpec = Field(default_factory=EvaluatorSpec)
    redis: RedisSpec = Field(default_factory=RedisSpec)
    observability: ObservabilitySpec = Field(default_factory=ObservabilitySpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    migration: MigrationSpec = Field(default_factory=MigrationSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)


# ---------------------------------------------------------------------------------------------
# Status: written by the operator only.

ConditionType = Literal["SecretReady", "LearnerApiAvailable", "EvaluatorAvailable", "Progressing", "Degraded", "Ready",
                        "Migrated", "RolledOut"]
CONDITION_TYPES: tuple[ConditionType, ...] = (
    "Ready", "SecretReady", "LearnerApiAvailable", "EvaluatorAvailable", "Progressing", "Degraded", "Migrated",
    "RolledOut",
)
MigrationPhase = Literal["", "Running", "Succeeded", "Failed"]
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(_Model):
    """The shape of metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    observed_generation: int = Field(default=0, ge=0)
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    reason: str = Field(pattern=REASON_PATTERN, min_length=1, max_length=1024)
    message: str = Field(default="", max_length=32768)


class WorkloadStatus(_Model):
    replicas: int = 0
    ready_replicas: int = 0
    ready: str = Field(default="0/0", description="Ready pods out of desired, as `kubectl get` shows them.")
    image: str = ""


class ImageStatus(_Model):
    """An image as the spec names it (``digest`` empty when it is not pinned)."""

    repository: str = ""
    tag: str = ""
    digest: str = ""


class MigrationStatus(_Model):
    """The migration Job of the spec's image: which one, and how it went (kept after the Job is gone)."""

    image: str = Field(default="", description="The image the Job migrates to (repository:tag or @digest).")
    job: str = Field(default="", description="The Job's name: <name>-migrate-<hash of the image>.")
    phase: MigrationPhase = ""
    message: str = Field(default="", max_length=4096,
                         description="Why it failed: the Job's reason and its pod's termination message.")


class LearnerPlatformStatus(_Model):
    observed_generation: int = 0
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    learner_api: WorkloadStatus = Field(default_factory=WorkloadStatus)
    evaluator: WorkloadStatus = Field(default_factory=WorkloadStatus)
    schema_version: str = Field(default="", description="The database schema version the last migration left.")
    migration: MigrationStatus = Field(default_factory=MigrationStatus)
    migrated_image: ImageStatus = Field(
        default_factory=ImageStatus,
        description="The last image whose migration succeeded: learner-api and evaluator run it until the "
        "next migration succeeds.",
    )
    rollout: RolloutStatus = Field(default_factory=RolloutStatus,
                                   description="The canary rollout (strategy Canary): step, share, verdict.")
