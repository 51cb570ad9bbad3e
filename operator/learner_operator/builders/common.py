"""What every child shares: names, labels, owner references, the restricted pod security."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from learner_operator.models import API_VERSION, FIELD_MANAGER, KIND, ImageSpec, LearnerPlatformSpec

Manifest = dict[str, Any]

PART_OF = "learner-platform"
API_PORT = 8000
EVALUATOR_METRICS_PORT = 9102
#: learner-api serves /metrics on its own port (not the public one); both read METRICS_PORT from the ConfigMap.
API_METRICS_PORT = EVALUATOR_METRICS_PORT
PUSHGATEWAY_PORT = 9091
#: UID/GID the images run as: above 10000 so they never match a host user.
RUN_AS_USER = 10001

#: Annotations on pod templates: a change of either rolls the pods.
SECRET_HASH_ANNOTATION = "learner.dev/secret-hash"
CONFIG_HASH_ANNOTATION = "learner.dev/config-hash"
ALERT_RULES_HASH_ANNOTATION = "learner.dev/alert-rules-hash"

REQUIRED_SECRET_KEYS = ("DATABASE_URL", "REDIS_URL")
#: Wired when present (optional secretKeyRefs), so that a Secret without them still starts.
OPTIONAL_SECRET_KEYS = ("JWT_SECRET", "JWT_PUBLIC_KEY", "PAYMENT_WEBHOOK_SECRET", "ALERTMANAGER_URL",
                        "DATABASE_MIGRATION_URL")
#: The keys whose values the pods' secret digest covers (secret_digest).
SECRET_DIGEST_KEYS = frozenset(REQUIRED_SECRET_KEYS + OPTIONAL_SECRET_KEYS)

#: KEDA's Redis scalers take an address (host:port, or a comma-separated list of a cluster's nodes), not
#: a URL: the Secret holds it beside REDIS_URL for the evaluator's autoscaler, which reads it through a
#: TriggerAuthentication (builders/autoscaling.py). No container gets it.
SCALER_ADDRESS_KEY = "REDIS_ADDRESS"
SCALER = "KEDA's scaler of the evaluator"

MIGRATE_CONTAINER = "migrate"
#: Which of the Secret's keys each container gets (by secretKeyRef), and nothing else: the table owner's
#: DATABASE_MIGRATION_URL reaches only the migration Job's pod (it runs for minutes per image, never
#: beside the serving pods), the JWT and webhook keys only the server. Kubernetes has no "this key, else
#: that one", so migrate gets DATABASE_URL as its fallback too (`learner-api migrate` prefers
#: DATABASE_MIGRATION_URL).
CONTAINER_SECRET_KEYS: dict[str, tuple[str, ...]] = {
    MIGRATE_CONTAINER: ("DATABASE_MIGRATION_URL", "DATABASE_URL"),
    "learner-api": ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_PUBLIC_KEY", "PAYMENT_WEBHOOK_SECRET"),
    "evaluator": ("DATABASE_URL", "REDIS_URL", "ALERTMANAGER_URL"),
}


@dataclasses.dataclass(frozen=True)
class SecretNeed:
    """One thing the Secret must hold: any one of ``keys``, non-empty, for the containers in ``needed_by``."""

    keys: tuple[str, ...]
    needed_by: tuple[str, ...]

    def met_by(self, data: Mapping[str, bytes]) -> bool:
        return any(data.get(key) for key in self.keys)

    def __str__(self) -> str:
        return f"{' or '.join(self.keys)} (for {', '.join(self.needed_by)})"


def secret_needs(spec: LearnerPlatformSpec, *, autoscaler: bool = False) -> list[SecretNeed]:
    """What the enabled components cannot start without. Outside development learner-api refuses to
    start without a JWT key (every route would answer 503), so that is a need there, not an option.
    ``autoscaler``: the evaluator is to be scaled by KEDA (asked for, and the cluster serves KEDA's
    API), whose scaler cannot reach Redis without REDIS_ADDRESS."""
    components = ["learner-api", *(["evaluator"] if spec.evaluator.enabled else [])]
    needs = [SecretNeed((key,), tuple(components)) for key in REQUIRED_SECRET_KEYS]
    if spec.environment != "development":
        needs.append(SecretNeed(("JWT_SECRET", "JWT_PUBLIC_KEY"), ("learner-api",)))
    if autoscaler:
        needs.append(SecretNeed((SCALER_ADDRESS_KEY,), (SCALER,)))
    return needs


def unmet_secret_needs(
    spec: LearnerPlatformSpec, data: Mapping[str, bytes], *, autoscaler: bool = False,
) -> list[SecretNeed]:
    """The needs an env file or Secret leaves unmet (an empty value, as a blank line in the env file
    makes, counts as missing)."""
    return [need for need in secret_needs(spec, autoscaler=autoscaler) if not need.met_by(data)]


@dataclasses.dataclass(frozen=True)
class CanaryPlan:
    """The canary Deployment a rollout wants now (builders.canary)."""

    image: ImageSpec
    replicas: int


@dataclasses.dataclass(frozen=True)
class Platform:
    """One LearnerPlatform as the builders need it: identity, the parsed spec, the Secret's digest."""

    name: str
    namespace: str
    uid: str
    spec: LearnerPlatformSpec
    #: A digest of the referenced Secret's wired keys; never the values themselves.
    secret_hash: str = "unknown"
    #: The image learner-api and the evaluator run when it is not the spec's: the last one whose migration
    #: succeeded, while the spec's image is being migrated (or its migration failed). None: the spec's.
    serving_image: ImageSpec | None = None
    #: A canary rollout under way (learner_operator.rollout): the canary Deployment to run beside the stable one.
    canary: CanaryPlan | None = None


def serving(p: Platform) -> Platform:
    """The platform as its workloads are built: on the image they may run now (see ``serving_image``)."""
    if p.serving_image is None:
        return p
    return dataclasses.replace(p, spec=p.spec.model_copy(update={"image": p.serving_image}), serving_image=None)


def secret_digest(uid: str, data: Mapping[str, bytes]) -> str:
    """A short salted digest of the wired keys: enough to roll pods on rotation, useless to recover a value."""
    digest = hashlib.sha256(uid.encode())
    for key in sorted(k for k in data if k in SECRET_DIGEST_KEYS):
        digest.update(key.encode() + b"\0" + data[key] + b"\0")
    return digest.hexdigest()[:16]


def content_digest(data: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode() + b"\0" + data[key].encode() + b"\0")
    return digest.hexdigest()[:16]


def api_name(p: Platform) -> str:
    return f"{p.name}-learner-api"


def evaluator_name(p: Platform) -> str:
    return f"{p.name}-evaluator"


def pushgateway_name(p: Platform) -> str:
    return f"{p.name}-pushgateway"


def alert_rules_name(p: Platform) -> str:
    return f"{p.name}-alert-rules"


def config_name(p: Platform) -> str:
    return f"{p.name}-config"


def label_value(text: str) -> str:
    """Labels hold at most 63 characters from [A-Za-z0-9._-], starting and ending alphanumeric."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return cleaned.strip("._-")


def selector_labels(p: Platform, app: str) -> dict[str, str]:
    """The immutable part of the labels: what Deployments, Services and PDBs select on."""
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": p.name}


def labels(p: Platform, app: str, component: str) -> dict[str, str]:
    return {
        **selector_labels(p, app),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "app.kubernetes.io/version": label_value(p.spec.image.tag),
    }


def metadata(p: Platform, name: str, app: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": p.namespace,
        "labels": labels(p, app, component),
        "ownerReferences": [{
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": p.name,
            "uid": p.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }],
    }


def pod_security_context() -> dict[str, Any]:
    """Pod Security Standards "restricted", pod level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Pod Security Standards "restricted", container level, plus a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tmp_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """The writable /tmp that a read-only root filesystem still needs (volume, mount)."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108


def topology_spread(p: Platform, app: str) -> list[dict[str, Any]]:
    """Spread replicas over nodes and zones, without refusing to schedule when that is impossible."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(p, app)},
            "matchLabelKeys": ["pod-template-hash"],
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


def secret_env(p: Platform, container: str) -> list[dict[str, Any]]:
    """The container's own keys of the Secret (CONTAINER_SECRET_KEYS), wired by reference: the values
    never leave the Secret. Optional keys are optional references, so a Secret without them starts."""
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": p.spec.secret_ref.name, "key": key,
                                                      **({"optional": True} if key in OPTIONAL_SECRET_KEYS else {})}}}
        for key in CONTAINER_SECRET_KEYS[container]
    ]


def resources(spec_resources: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = spec_resources.model_dump(by_alias=True, mode="json")
    return dumped


def image(p: Platform) -> str:
    """Pinned by digest when the spec has one (what runs is then exactly what was scanned and signed)."""
    if p.spec.image.digest:
        return f"{p.spec.image.repository}@{p.spec.image.digest}"
    return f"{p.spec.image.repository}:{p.spec.image.tag}"


def pushgateway_url(p: Platform) -> str:
    gateway = p.spec.observability.pushgateway
    if not gateway.enabled:
        return ""
    return gateway.url or f"http://{pushgateway_name(p)}.{p.namespace}.svc:{PUSHGATEWAY_PORT}"


def config_data(p: Platform) -> dict[str, str]:
    data = {
        "NODE_ENV": p.spec.environment,
        "TENANT_MODE": p.spec.tenant_mode,
        "PORT": str(API_PORT),
        "METRICS_PORT": str(EVALUATOR_METRICS_PORT),
        "LOG_FORMAT": "json",
    }
    if url := pushgateway_url(p):
        data["PUSHGATEWAY_URL"] = url
    if p.spec.redis.cluster:  # absent on one server, so platforms made before this keep their ConfigMap
        data["REDIS_CLUSTER"] = "true"
        data["PROGRESS_STREAM_SHARDS"] = str(p.spec.redis.progress_stream_shards)
    return data


def pod_template(
    p: Platform, app: str, component: str, *, metrics_port: int, grace_seconds: int, container: dict[str, Any],
    mounts: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (), annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A restricted pod running the platform image; ``container`` adds what differs (args, ports, probes).

    Secret keys, the ConfigMap, security contexts, /tmp and the rollout hashes are the same for
    every workload, so they are filled in here once.
    """
    volume, mount = tmp_volume()
    same = {"image": image(p), "imagePullPolicy": p.spec.image.pull_policy, "command": ["learner-api"],
            # A fatal start-up error is one line in /dev/termination-log (or, failing that, the log's
            # tail): `kubectl describe pod` and the operator's conditions can quote it.
            "terminationMessagePolicy": "FallbackToLogsOnError"}
    return {
        "metadata": {
            "labels": labels(p, app, component),
            "annotations": {
                SECRET_HASH_ANNOTATION: p.secret_hash,
                CONFIG_HASH_ANNOTATION: content_digest(config_data(p)),
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port),
                "prometheus.io/path": "/metrics",
                **(annotations or {}),
            },
        },
        "spec": {
            "serviceAccountName": f"{p.name}-{app}",
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(),
            "terminationGracePeriodSeconds": grace_seconds,
            "topologySpreadConstraints": topology_spread(p, app),
            "containers": [{
                "name": app,
                **same,
                **container,
                "envFrom": [{"configMapRef": {"name": config_name(p)}}],
                "env": [*container.get("env", []), *secret_env(p, app)],
                "securityContext": container_security_context(),
                "volumeMounts": [mount, *(m for _, m in mounts)],
            }],
            "volumes": [volume, *(v for v, _ in mounts)],
        },
    }


def http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }
