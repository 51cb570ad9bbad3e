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


#: What `helm template` must be told to render the Prometheus Operator's kinds (a cluster tells helm itself).
PROMETHEUS_OPERATOR = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
                       "--api-versions", "monitoring.coreos.com/v1/PrometheusRule")


def render(values: Path | None = None, *sets: str, namespace: str = "learning", release: str = "ai-platform",
           extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--include-crds",
            "--set", "image.tag=0123456789abcdef", *extra]
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
    assert [r["metadata"]["name"] for r in of_kind(docs, "ClusterRole")] == ["learning-ai-platform-operator-discovery"]
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
    """Run the operator through create, rotation of features and a missing Secret, on a cluster with KEDA
    (the evaluator's ScaledObject and TriggerAuthentication are made, watched and pruned); compare with the rules."""
    from learner_operator.handlers import LeaseConfig
    from tests import keda_api
    from tests.operator_harness import NS, Operator, eventually, settled
    from tests.test_operator import children, condition, secret

    def keda_objects() -> int:
        return sum(len(cluster.all(keda_api.API_VERSION, plural, NS)) for plural in
                   ("scaledobjects", "triggerauthentications"))

    await keda_api.install(cluster)
    operator = Operator(cluster, lease=LeaseConfig(namespace=NS, identity="rbac", lease_seconds=2,
                                                   renew_seconds=0.2))
    await operator.start()
    try:
        doc = load(EXAMPLES / "03-production.yaml")
        doc["spec"]["secretRef"]["name"] = "not-yet"
        doc["spec"]["evaluator"]["autoscaling"] = {"enabled": True, "minReplicas": 2, "maxReplicas": 6}
        cluster.put(doc)
        await eventually(lambda: condition(cluster, "SecretReady") == ("False", "SecretNotFound"))
        cluster.put(secret("not-yet", DATABASE_URL="postgresql://app:pw@db:5432/learn",
                           REDIS_URL="rediss://cache:6380/0", REDIS_ADDRESS="cache:6380"))
        await eventually(lambda: len(children(cluster)) == 13 and keda_objects() == 2)
        [job] = await eventually(lambda: cluster.all("batch/v1", "jobs", NS), what="the migration Job")
        cluster.finish_job(NS, job["metadata"]["name"], succeeded=False, message="could not lock")
        await eventually(lambda: condition(cluster, "Migrated") == ("False", "MigrationFailed"))
        # the SRE's annotations: a failed migration retried (its Job deleted and made again), a rollout command
        # acknowledged (removed from the platform)
        cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform", {"metadata": {"annotations": {
            "learner.dev/retry-migration": "true", "learner.dev/rollout": "promote"}}})
        [job] = await eventually(lambda: [j for j in cluster.all("batch/v1", "jobs", NS)
                                          if j["metadata"]["uid"] != job["metadata"]["uid"]], what="the Job again")
        cluster.finish_job(NS, job["metadata"]["name"], succeeded=True, message="schema version 0007_x")
        await eventually(lambda: condition(cluster, "Migrated") == ("True", "MigrationSucceeded"))
        await eventually(lambda: not (cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")
                                      or {})["metadata"].get("annotations"), what="both annotations removed")
        cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform", {"spec": {
            "evaluator": {"enabled": False}, "observability": {"serviceMonitor": False},
            "learnerApi": {"autoscaling": {"enabled": False}, "replicas": 3,
                           "podDisruptionBudget": {"enabled": False}}}})
        await eventually(lambda: len(children(cluster)) == 5 and keda_objects() == 0,
                         what="pruned to the api, its SA, Service, NP, config")
        await settled(cluster, operator)
    finally:
        await operator.stop()
        await keda_api.uninstall(cluster)
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


def refusal(*args: str) -> str:
    result = helm("template", "ai-platform", str(CHART), "--namespace", "learning", *args, check=False)
    assert result.returncode != 0, "helm rendered what it should refuse"
    return result.stderr


def test_an_all_digit_sha_is_taken_as_written(tmp_path: Path) -> None:
    for sha in ("1234567", "0123456", "1234567890123456789012345678901234567890"):
        docs = render(None, f"image.tag={sha}")
        [platform] = of_kind(docs, "LearnerPlatform")
        assert platform["spec"]["image"]["tag"] == sha
        assert of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"] == \
            f"ghcr.io/ai-platform/learner-operator:{sha}"
    # in a values file YAML has made a number of it already: refused with the fix, not guessed at
    values = tmp_path / "digits.yaml"
    values.write_text("image: {tag: 1234567}\n")
    assert "image.tag is a number in a values file: quote it" in refusal("-f", str(values))


def test_a_digest_pins_both_images(crd: dict[str, Any]) -> None:
    operator, api = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    docs = render(None, f"image.digest.operator={operator}", f"image.digest.learnerApi={api}")
    container = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/ai-platform/learner-operator@{operator}"
    [platform] = of_kind(docs, "LearnerPlatform")
    defaulted, errors = admit(crd, platform)
    assert errors == []
    assert parse_spec(defaulted["spec"]).image.digest == api
    assert "digest" not in of_kind(render(), "LearnerPlatform")[0]["spec"]["image"]
    assert "/image/digest/operator" in refusal("--set", "image.tag=abc", "--set", "image.digest.operator=latest")


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}


def identities(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
            for d in docs if d["kind"] != "CustomResourceDefinition"}


def test_staging_and_prod_side_by_side_in_one_cluster() -> None:
    """Two releases, the docs' commands, one cluster: disjoint watchNamespaces, nothing they both write."""
    staging = render(CHART / "values-staging.yaml", "operator.watchNamespaces={learning-staging}",
                     namespace="learning-staging")
    prod = render(CHART / "values-prod.yaml", "operator.watchNamespaces={learning}", namespace="learning")
    assert identities(staging) & identities(prod) == set()
    for docs, namespace in ((staging, "learning-staging"), (prod, "learning")):
        assert {r["metadata"]["namespace"] for r in of_kind(docs, "Role")} == {namespace}
        args = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [a for a in args if a.startswith(("--namespace", "--all-namespaces"))] == [f"--namespace={namespace}"]
    # even two every-namespace releases would not overwrite each other's cluster-wide RBAC
    assert identities(render(namespace="a")) & identities(render(namespace="b")) == set()


def test_watch_namespaces_must_include_the_releases_own_platform() -> None:
    message = refusal("--set", "image.tag=abc", "--set", "operator.watchNamespaces={team-a}")
    assert "operator.watchNamespaces (team-a) leaves this release's LearnerPlatform in namespace learning " \
           "unwatched: add learning, or set platform.enabled=false" in message
    assert of_kind(render(None, "operator.watchNamespaces={team-a}", "platform.enabled=false"), "Role")


def notes(*args: str) -> str:
    """NOTES.txt as `helm install` prints it, offline (--dry-run=client needs no cluster)."""
    result = helm("install", "ai-platform", str(CHART), "--namespace", "learning", "--dry-run=client",
                  "--set", "image.tag=abc", *args)
    return result.stdout.split("NOTES:", 1)[1]


def test_prometheus_operator_objects_only_where_the_cluster_serves_them() -> None:
    monitoring = {"ServiceMonitor", "PrometheusRule"}
    without = render(CHART / "values-prod.yaml")
    assert not {d["kind"] for d in without} & monitoring
    assert of_kind(without, "LearnerPlatform")[0]["spec"]["observability"]["serviceMonitor"] is False
    assert "Skipped: the ServiceMonitor/PrometheusRule objects you turned on" in \
        notes("-f", str(CHART / "values-prod.yaml"))
    served = render(CHART / "values-prod.yaml", extra=PROMETHEUS_OPERATOR)
    assert monitoring <= {d["kind"] for d in served}
    assert of_kind(served, "LearnerPlatform")[0]["spec"]["observability"]["serviceMonitor"] is True
    assert "Skipped" not in notes()


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda v: v.name if v else "values.yaml")
def test_every_namespaced_object_names_its_namespace(values: Path | None) -> None:
    for doc in render(values, "operator.watchNamespaces={learning,other}", extra=PROMETHEUS_OPERATOR):
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace"), f"{doc['kind']}/{doc['metadata']['name']}"


def crd_upgrade_command(text: str) -> str:
    [command] = [line.strip() for line in text.splitlines() if "kubectl apply" in line and "crd" in line.lower()]
    return command


def test_one_crd_upgrade_command_that_helm_v4_can_live_with() -> None:
    """Helm v4 applies crds/ server-side as field manager `helm` on install; a CRD last applied by another
    manager (plain `kubectl apply --server-side` is `kubectl`) makes that install fail with a conflict. The
    documented command applies as `helm` too, taking over any field another manager holds."""
    install = (ROOT / "docs" / "install.md").read_text()
    command = crd_upgrade_command(install.split("## 5.", 1)[1].split("## 6.", 1)[0])
    assert command == crd_upgrade_command(notes())
    assert command == ("helm show crds ./helm/ai-platform | kubectl apply --server-side --field-manager=helm "
                       "--force-conflicts -f -")
    assert crd_upgrade_command(install) == command  # the only one in the docs
    shown = helm("show", "crds", str(CHART)).stdout
    assert [doc for doc in yaml.safe_load_all(shown) if doc] == [yaml.safe_load(CRD_FILE.read_text())]


def test_the_readmes_own_platform_flow_starts_the_operator(crd: dict[str, Any]) -> None:
    """The README's flow for teams with their own LearnerPlatform installs the CRD and the operator (no
    platform of the chart's), and the platform it applies is one the API server admits."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Or with your own LearnerPlatform objects", 1)[1].split("```sh\n", 1)[1].split("```")[0]
    [install] = [line for line in block.splitlines() if line.startswith("helm upgrade --install")]
    args = install.replace("$GIT_SHA", "abc").split()[3:]  # after `helm upgrade --install`
    docs = [d for d in yaml.safe_load_all(helm("template", *args, "--include-crds").stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount"} <= kinds
    assert "LearnerPlatform" not in kinds
    [applied] = [line.split()[-1] for line in block.splitlines() if line.startswith("kubectl apply -f")]
    _, errors = admit(crd, load(ROOT / applied))
    assert errors == []


def _schema_leaves(schema: dict[str, Any], path: str = "") -> set[str]:
    """Every field path a LearnerPlatform spec can hold (list items as ``[]``; a map is one field)."""
    if schema.get("type") == "object" and "properties" in schema:
        return {leaf for name, sub in schema["properties"].items() for leaf in _schema_leaves(sub, f"{path}.{name}")}
    if schema.get("type") == "array" and (schema.get("items") or {}).get("type") == "object":
        return _schema_leaves(schema["items"], f"{path}[]")
    return {path}


def _value_leaves(value: Any, schema: dict[str, Any], path: str = "") -> set[str]:
    if schema.get("type") == "object" and "properties" in schema and isinstance(value, dict):
        return {leaf for name, sub in value.items() if name in schema["properties"]
                for leaf in _value_leaves(sub, schema["properties"][name], f"{path}.{name}")}
    if schema.get("type") == "array" and (schema.get("items") or {}).get("type") == "object":
        return {leaf for item in value for leaf in _value_leaves(item, schema["items"], f"{path}[]")}
    return {path}


def test_every_field_of_the_crd_is_reachable_from_the_charts_values(tmp_path: Path, crd: dict[str, Any]) -> None:
    """A platform team that installs with the chart can set everything a `kubectl apply` user can: a field added
    to the CRD without a value in the chart (and values.schema.json) fails here."""
    values = tmp_path / "everything.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"digest": {"learnerApi": "sha256:" + "a" * 64}},
        "evaluator": {"alertRules": [
            {"alert": "LagHigh", "signal": "ingest_lag_seconds", "above": 60, "for": "5m",
             "labels": {"severity": "page"}, "annotations": {"summary": "lag"}},
            {"alert": "Quiet", "signal": "seconds_since_progress", "below": 1}]},
        "observability": {"pushgateway": {"enabled": True, "url": "http://pushgateway.monitoring:9091"}},
    }))
    [platform] = of_kind(render(values), "LearnerPlatform")
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = _schema_leaves(spec_schema) - _value_leaves(platform["spec"], spec_schema)
    assert missing == set(), f"CRD fields no chart value reaches: {sorted(missing)}"
    # and what the chart renders is admitted by the CRD
    assert parse_spec(platform["spec"]).rollout.strategy == "RollingUpdate"


def test_a_canary_rollout_and_redis_cluster_from_values(crd: dict[str, Any]) -> None:
    [platform] = of_kind(render(None, "rollout.strategy=Canary", "redis.cluster=true",
                                "evaluator.autoscaling.enabled=true"), "LearnerPlatform")
    spec = parse_spec(platform["spec"])
    assert (spec.rollout.canary, spec.redis.cluster, spec.evaluator.autoscaling.enabled) == (True, True, True)
    assert "/rollout/strategy" in refusal("--set", "image.tag=abc", "--set", "rollout.strategy=BlueGreen")


def test_the_operator_may_reach_learner_apis_metrics_port_and_nothing_else_new() -> None:
    """Canary rollouts read learner-api's /metrics from the pods (builders.common.API_METRICS_PORT)."""
    from learner_operator.builders.common import API_METRICS_PORT

    [policy] = [doc for doc in of_kind(render(), "NetworkPolicy") if doc["metadata"]["name"] == "ai-platform-operator"]
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53, 443, 6443, API_METRICS_PORT}
