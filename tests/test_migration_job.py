"""The migration Job and the image gate as pure functions: what is built, and what the conditions say."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from learner_operator import builders
from learner_operator.builders import migration
from learner_operator.models import ImageSpec
from learner_operator.status import Observation, Verdict, Workload, verdicts
from tests.test_builders import K8S_VERSIONS, by_kind, platform

DIGEST = "sha256:" + "ab" * 32


def job(spec: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    return migration.job(platform({"image": {"tag": "v2"}, **(spec or {})}, **kwargs))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_job_validates_strictly(version: str) -> None:
    kubernetes_validate.validate(job(), version, strict=True)


def test_the_job_pod_is_restricted_and_runs_migrate_once_per_attempt() -> None:
    spec = job()["spec"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert (container["command"], container["args"]) == (["learner-api"], ["migrate"])
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]} == {"DATABASE_MIGRATION_URL",
                                                                                 "DATABASE_URL"}
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (2, 900, 86400)
    tuned = job({"migration": {"activeDeadlineSeconds": 3600, "backoffLimit": 0}})["spec"]
    assert (tuned["backoffLimit"], tuned["activeDeadlineSeconds"]) == (0, 3600)


def test_one_job_name_per_image_and_short_enough_for_its_pods() -> None:
    def name(image: dict[str, Any], platform_name: str = "ai-platform") -> str:
        p = platform({"image": image})
        return migration.job_name(builders.Platform(platform_name, p.namespace, p.uid, p.spec))

    assert name({"tag": "v2"}) == name({"tag": "v2"}) != name({"tag": "v3"})
    assert name({"tag": "v2"}) != name({"tag": "v2", "repository": "registry.example/learner-api"})
    # pinned by digest, the tag only labels the image: the same image, the same Job
    assert name({"tag": "v2", "digest": DIGEST}) == name({"tag": "v3", "digest": DIGEST})
    # a pod is <job>-<5 characters>, and the Job's name is a label value: 63 at most either way
    assert len(name({"tag": "v2"}, "a" * 40)) + 6 <= 63


def test_while_migrating_only_the_deployments_stay_on_the_old_image() -> None:
    spec = {"image": {"tag": "v2"}}
    old = ImageSpec(repository="ghcr.io/ai-platform/learner-api", tag="v1")
    plain = by_kind(builders.children(platform(spec)))
    p = platform(spec)
    held = by_kind(builders.children(builders.Platform(p.name, p.namespace, p.uid, p.spec, p.secret_hash, old)))
    assert plain.keys() == held.keys()
    for key, manifest in held.items():
        if key[0] != "Deployment":
            assert manifest == plain[key]
            continue
        template = manifest["spec"]["template"]
        assert template["spec"]["containers"][0]["image"] == "ghcr.io/ai-platform/learner-api:v1"
        assert template["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"  # the pods say what they run


RUNNING = Verdict("False", "MigrationRunning", "Job x is migrating")
FAILED = Verdict("False", "MigrationFailed", "Job x failed: boom")
UP = Workload(exists=True, desired=2, ready=2, available=True)
DOWN = Workload(exists=True, desired=2, ready=0, available=False)


def judged(migration_verdict: Verdict, api: Workload) -> dict[str, tuple[str, str]]:
    obs = Observation(3, secret=Verdict("True", "SecretFound", ""), api=api, evaluator=UP,
                      migration=migration_verdict)
    return {kind: (v.status, v.reason) for kind, v in verdicts(obs, "api", "evaluator").items()}


def test_ready_stays_true_on_the_old_version_while_migrating_and_after_a_failure() -> None:
    running = judged(RUNNING, UP)
    assert running["Ready"] == ("True", "AllComponentsReady")
    assert running["Progressing"] == ("True", "MigrationRunning")
    assert running["Degraded"] == ("False", "AsExpected")
    assert running["Migrated"] == ("False", "MigrationRunning")
    failed = judged(FAILED, UP)
    assert failed["Ready"] == ("True", "AllComponentsReady")
    assert failed["Degraded"] == ("True", "MigrationFailed")
    assert failed["Progressing"] == ("False", "MigrationFailed")


def test_a_failed_migration_is_why_nothing_serves() -> None:
    assert judged(FAILED, DOWN)["Ready"] == ("False", "MigrationFailed")
    assert judged(RUNNING, DOWN)["Ready"] == ("False", "MinimumReplicasUnavailable")


def test_the_api_network_policy_lets_the_migration_reach_the_database_and_nothing_else() -> None:
    """A namespace that denies by default must not cut the migration off from PostgreSQL."""
    p = platform({"image": {"tag": "v2"}})
    policy = by_kind(builders.children(p))[("NetworkPolicy", "ai-platform-learner-api")]["spec"]
    pod_labels = migration.job(p)["spec"]["template"]["metadata"]["labels"]
    selector = policy["podSelector"]
    assert all(pod_labels.get(k) == v for k, v in selector["matchLabels"].items())
    for expression in selector["matchExpressions"]:
        assert expression["operator"] == "In"
        assert pod_labels[expression["key"]] in expression["values"]
    assert {"port": 5432, "protocol": "TCP"} in [port for rule in policy["egress"] for port in rule["ports"]]
    # ... and the migration's pods are not learner-api's: no Service, PDB or Deployment selects them
    for kind in ("Service", "PodDisruptionBudget", "Deployment"):
        for key, manifest in by_kind(builders.children(p)).items():
            if key[0] == kind:
                labels = manifest["spec"]["selector"].get("matchLabels", manifest["spec"]["selector"])
                assert not all(pod_labels.get(k) == v for k, v in labels.items()), key
