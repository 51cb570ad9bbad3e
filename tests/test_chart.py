"""The Helm chart, rendered by the real helm v4 binary (fetched by scripts/test, see scripts/lib.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from learner_operator.models import parse_spec
from tests.conftest import CRD_FILE, EXAMPLES, ROOT, load
from tests.crd_schema import admit

CHART = ROOT / "helm" / "ai-platform"
VALUES_FILES = [None, CHART / "values-staging.yaml", CHART / "values-prod.yaml"]
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("helm not found: run scripts/test, which fetches helm v4 into .tools/bin")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=check)


def render(values: Path | None = None, *sets: str, namespace: str = "learning") -> list[dict[str, Any]]:
    args = ["template", "ai-platform", str(CHART), "--namespace", namespace, "--include-crds",
            "--set", "image.tag=0123456789abcdef"]
    if values is not None:
        args += ["-f", str(values)]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda v: v.name if v else "values.yaml")
def test_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--set", "image.tag=0123456789abcdef"]
    result = helm(*args, *(["-f", str(values)] if values else []), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda v: v.name if v else "values.yaml")
def test_every_rendered_manifest_validates(values: Path | None, version: str, crd: dict[str, Any]) -> None:
    docs = render(values)
    for doc in docs:
        if doc["kind"] == "LearnerPlatform":
            defaulted, errors = admit(crd, doc)
            assert errors == []
            parse_spec(defaulted["spec"])
        elif not doc["apiVersion"].startswith("monitoring.coreos.com/"):  # the Prometheus Operator's kinds
            # have no official schema; their rules are checked by promtool in test_alerts.py
            kubernetes_validate.validate(doc, version, strict=True)
    assert len(of_kind(docs, "LearnerPlatform")) == 1


def test_the_seeds_values_keep_their_meaning() -> None:
    staging = of_kind(render(CHART / "values-staging.yaml"), "LearnerPlatform")[0]["spec"]
    assert staging["environment"] == "staging"
    assert staging["learnerApi"]["autoscaling"] == {"enabled": True, "minReplicas": 2, "maxReplicas": 4,
                                                    "targetCPUUtilizationPercentage": 70}
    assert staging["image"] == {"repository": "ghcr.io/ai-platform/learner-api", "tag": "0123456789abcdef",
                                "pullPolicy": "IfNotPresent"}
    assert staging["secretRef"] == {"name": "ai-platform-secrets"}
    default = of_kind(render(), "LearnerPlatform")[0]["spec"]
    assert default["learnerApi"]["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                  "limits": {"cpu": "500m", "memory": "512Mi"}}
    assert default["tenantMode"] == "enabled"
    custom = of_kind(render(None, "replicaCount=5", "hpa.enabled=false", "secrets.secretName=team-secrets",
                            "pdb.minAvailable=2"), "LearnerPlatform")[0]["spec"]
    assert custom["learnerApi"]["replicas"] == 5
    assert custom["learnerApi"]["autoscaling"]["enabled"] is False
    assert custom["secretRef"]["name"] == "team-secrets"
    assert of_kind(render(None, "platform.enabled=false"), "LearnerPlatform") == []


@pytest.mark.parametrize(("setting", "complaint"), [
    ("hpa.maxReplica=3", "additional properties 'maxReplica' not allowed"),
    ("hpa.targetCPUUtilizationPercentage=150", "/hpa/targetCPUUtilizationPercentage"),
    ("env.NODE_ENV=prod", "/env/NODE_ENV"),
    ("secrets.secretName=Bad_Name", "/secrets/secretName"),
    ("image.tag=", "image.tag is required"),
])
def test_bad_values_are_refused_with_the_reason(setting: str, complaint: str) -> None:
    result = helm("template", "ai-platform", str(CHART), "--set", "image.tag=abc", "--set", setting, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_the_charts_crd_is_the_generated_one_and_versions_agree() -> None:
    assert (CHART / "crds" / CRD_FILE.name).read_text() == CRD_FILE.read_text()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_the_operator_pod_is_restricted_and_probed() -> None:
    deployment = of_kind(render(CHART / "values-prod.yaml"), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["image"] == "ghcr.io/ai-platform/learner-operator:0123456789abcdef"
    assert "--all-namespaces" in container["args"]
    assert deployment["spec"]["replicas"] == 2


def test_no_secret_value_in_the_chart() -> None:
    for path in CHART.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for marker in ("postgres://", "postgresql://", "redis://", "rediss://", "password:"):
                assert marker not in text, f"{path} holds what looks like a secret value"
    assert [doc for doc in render() if doc["kind"] == "Secret"] == []


def test_watch_namespaces_get_roles_instead_of_a_cluster_role() -> None:
    docs = render(None, "operator.watchNamespaces={learning,learning-staging}")
    assert sorted(role["metadata"]["namespace"] for role in of_kind(docs, "Role")
                  if not role["metadata"]["name"].endswith("leader-election")) == ["learning", "learning-staging"]
    assert [r["metadata"]["name"] for r in of_kind(docs, "ClusterRole")] == ["ai-platform-operator-discovery"]
    args = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=learning" in args
    assert "--namespace=learning-staging" in args


def granted(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    rules = [rule for doc in docs if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]]
    out = set()
    for rule in rules:
        for name in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[name], f"wildcard in {rule}"
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def requested(log: list[Any]) -> set[tuple[str, str, str]]:
    out = set()
    for request in log:
        if request.resource is None or request.resource.plural is None:
            continue  # discovery (/api, /apis, /version): allowed to every authenticated user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        method = request.method.value
        if method == "GET":
            verb = "watch" if request.params.get("watch") == "true" else "get" if request.name else "list"
        else:
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
        out.add((request.resource.group or "", resource, verb))
        if request.headers.get("Content-Type", "").startswith("application/apply-patch"):
            # A server-side apply that creates the object is authorized as create as well as patch.
            out.add((request.resource.group or "", resource, "create"))
    return out


async def test_rbac_is_exactly_what_the_operator_does(cluster: Any) -> None:
    """Run the operator through create, rotation of features and a missing Secret; compare with the rules."""
    from learner_operator.handlers import LeaseConfig
    from tests.operator_harness import NS, Operator, eventually, settled
    from tests.test_operator import children, condition, secret

    operator = Operator(cluster, lease=LeaseConfig(namespace=NS, identity="rbac", lease_seconds=2,
                                                   renew_seconds=0.2))
    await operator.start()
    try:
        doc = load(EXAMPLES / "03-production.yaml")
        doc["spec"]["secretRef"]["name"] = "not-yet"
        cluster.put(doc)
        await eventually(lambda: condition(cluster, "SecretReady") == ("False", "SecretNotFound"))
        cluster.put(secret("not-yet"))
        await eventually(lambda: len(children(cluster)) == 13)
        cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform", {"spec": {
            "evaluator": {"enabled": False}, "observability": {"serviceMonitor": False},
            "learnerApi": {"autoscaling": {"enabled": False}, "replicas": 3,
                           "podDisruptionBudget": {"enabled": False}}}})
        await eventually(lambda: len(children(cluster)) == 5, what="pruned to the api, its SA, Service, NP, config")
        await settled(cluster, operator)
    finally:
        await operator.stop()
    rules = granted(render())
    used = requested(cluster.log)
    assert used - rules == set(), "the operator does something the chart does not allow"
    # blockOwnerDeletion is checked by the API server's admission, not a request of ours.
    unused = rules - used - {("learner.dev", "learnerplatforms/finalizers", "update")}
    assert unused == set(), "the chart allows something the operator never does"


def test_alert_rules_and_egress_ports_reach_the_platform(tmp_path: Path, crd: dict[str, Any]) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "evaluator": {"alertRules": [{"alert": "Lag", "signal": "ingest_lag_seconds", "above": 60, "for": "5m",
                                      "labels": {"severity": "page"}}]},
        "networkPolicy": {"egressPorts": [5432, 6380, 9093]}}))
    [platform] = of_kind(render(values), "LearnerPlatform")
    defaulted, errors = admit(crd, platform)
    assert errors == []
    spec = parse_spec(defaulted["spec"])
    assert [(r.alert, r.above, r.for_) for r in spec.evaluator.alert_rules] == [("Lag", 60.0, "5m")]
    assert spec.network_policy.egress_ports == [5432, 6380, 9093]
    bad = helm("template", "ai-platform", str(CHART), "--set", "image.tag=abc",
               "--set", "evaluator.alertRules[0].severity=page", check=False)
    assert bad.returncode != 0
