"""Rendered children: valid against the official schemas, restricted, wired by reference."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from learner_operator import builders, yamlio
from learner_operator.cli import render
from learner_operator.kube.paths import plural_of
from learner_operator.models import InvalidSpec, parse_spec
from tests.conftest import EXAMPLES, load
from tests.crd_schema import admit, validate_crd

#: The oldest Kubernetes minor still commonly run, and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
SECRET = {"DATABASE_URL": b"postgresql://app:s3cr3t-pg@db.example:5432/learn?sslmode=require",
          "REDIS_URL": b"rediss://:s3cr3t-redis@cache.example:6380/0"}


def platform(spec: dict[str, Any], secret: dict[str, bytes] | None = None) -> builders.Platform:
    uid = "7d6f3c1e-2b1a-4c55-9d1e-0a8f6b2c9e11"
    return builders.Platform(
        "ai-platform", "learning", uid, parse_spec(spec),
        builders.secret_digest(uid, secret if secret is not None else SECRET),
    )


def by_kind(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def pod_templates(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["spec"]["template"] for m in manifests if m["kind"] == "Deployment"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_child_validates_strictly(path: Path, version: str) -> None:
    manifests = builders.children(platform(load(path)["spec"]))
    for manifest in manifests:
        if manifest["kind"] == "ServiceMonitor" or manifest["apiVersion"] == "keda.sh/v1alpha1":
            continue  # not built-in kinds: no official schema; checked below (KEDA's against tests/crds/keda.yaml)
        kubernetes_validate.validate(manifest, version, strict=True)


def test_service_monitor_points_at_the_metrics_ports() -> None:
    manifests = builders.children(platform(load(EXAMPLES / "03-production.yaml")["spec"]))
    monitor = by_kind(manifests)[("ServiceMonitor", "ai-platform")]
    ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    service_ports = {p["name"] for m in manifests if m["kind"] == "Service" for p in m["spec"]["ports"]}
    assert ports <= service_ports
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_pods_meet_pod_security_restricted(path: Path) -> None:
    for template in pod_templates(builders.children(platform(load(path)["spec"]))):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] >= 10000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        assert all(set(volume) <= {"name", "emptyDir", "configMap", "secret"} for volume in spec["volumes"])
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["readOnlyRootFilesystem"] is True
            assert container["resources"]["limits"]
            assert container["resources"]["requests"]
            assert "readinessProbe" in container
            assert "livenessProbe" in container
        for container in spec.get("initContainers", []):
            assert container["securityContext"] == spec["containers"][0]["securityContext"]
            assert container["resources"]["limits"]


def test_learner_api_probes_and_defaults() -> None:
    manifests = by_kind(builders.children(platform(load(EXAMPLES / "01-minimal.yaml")["spec"])))
    container = manifests[("Deployment", "ai-platform-learner-api")]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"cpu": "500m", "memory": "512Mi"}}
    hpa = manifests[("HorizontalPodAutoscaler", "ai-platform-learner-api")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    config = manifests[("ConfigMap", "ai-platform-config")]["data"]
    assert (config["NODE_ENV"], config["TENANT_MODE"]) == ("production", "enabled")


def test_with_the_hpa_the_deployment_leaves_replicas_alone() -> None:
    spec = load(EXAMPLES / "01-minimal.yaml")["spec"]
    with_hpa = by_kind(builders.children(platform(spec)))
    assert "replicas" not in with_hpa[("Deployment", "ai-platform-learner-api")]["spec"]
    spec["learnerApi"] = {"autoscaling": {"enabled": False}, "replicas": 4}
    without = by_kind(builders.children(platform(spec)))
    assert without[("Deployment", "ai-platform-learner-api")]["spec"]["replicas"] == 4
    assert ("HorizontalPodAutoscaler", "ai-platform-learner-api") not in without


def test_secret_is_wired_by_reference_and_never_copied() -> None:
    manifests = builders.children(platform(load(EXAMPLES / "03-production.yaml")["spec"]))
    text = yamlio.dump_all(manifests)
    for value in SECRET.values():
        assert value.decode() not in text
        assert b"s3cr3t" not in text.encode()
    for template in pod_templates(manifests):
        env = {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}
        if template["metadata"]["labels"]["app.kubernetes.io/name"] == "pushgateway":
            assert env == {}
            continue
        for key in ("DATABASE_URL", "REDIS_URL"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "ai-platform-secrets", "key": key}


def test_rotating_the_secret_changes_the_pod_template() -> None:
    spec = load(EXAMPLES / "01-minimal.yaml")["spec"]
    before = pod_templates(builders.children(platform(spec)))
    rotated = {**SECRET, "DATABASE_URL": b"postgresql://app:rotated@db.example:5432/learn"}
    after = pod_templates(builders.children(platform(spec, rotated)))
    for old, new in zip(before, after, strict=True):
        assert old["metadata"]["annotations"][builders.SECRET_HASH_ANNOTATION] != \
            new["metadata"]["annotations"][builders.SECRET_HASH_ANNOTATION]
    # An unrelated key in the Secret does not restart anything.
    unrelated = pod_templates(builders.children(platform(spec, {**SECRET, "SOMETHING_ELSE": b"x"})))
    assert unrelated == before


def test_every_child_carries_the_standard_labels_and_an_owner() -> None:
    for manifest in builders.children(platform(load(EXAMPLES / "03-production.yaml")["spec"])):
        labels = manifest["metadata"]["labels"]
        assert set(labels) == {f"app.kubernetes.io/{k}" for k in
                               ("name", "instance", "component", "part-of", "managed-by", "version")}
        assert labels["app.kubernetes.io/managed-by"] == "learner-platform-operator"
        owner = manifest["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "LearnerPlatform"
        assert owner["controller"] is True


def test_switches_add_and_remove_children() -> None:
    spec = load(EXAMPLES / "01-minimal.yaml")["spec"]
    names = set(by_kind(builders.children(platform(spec))))
    assert ("Deployment", "ai-platform-evaluator") in names
    assert not any(kind == "ServiceMonitor" for kind, _ in names)
    spec.update(evaluator={"enabled": False}, networkPolicy={"enabled": False},
                learnerApi={"podDisruptionBudget": {"enabled": False}})
    fewer = set(by_kind(builders.children(platform(spec))))
    assert {kind for kind, name in fewer} == {"ServiceAccount", "ConfigMap", "Service", "Deployment",
                                              "HorizontalPodAutoscaler"}
    assert ("Deployment", "ai-platform-evaluator") not in fewer


def test_network_policy_allows_only_what_is_needed() -> None:
    manifests = by_kind(builders.children(platform(load(EXAMPLES / "02-staging.yaml")["spec"])))
    api = manifests[("NetworkPolicy", "ai-platform-learner-api")]["spec"]
    # the API's /metrics port: only the operator (it judges canaries) and the Prometheus namespace
    assert api["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]},
                              {"ports": [{"port": 9102, "protocol": "TCP"}], "from": [
                                  {"namespaceSelector": {},
                                   "podSelector": {"matchLabels": {"app.kubernetes.io/name": "learner-operator"}}},
                                  {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                              ]}]
    egress_ports = {p["port"] for rule in api["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 6379, 6380}
    evaluator = manifests[("NetworkPolicy", "ai-platform-evaluator")]["spec"]
    assert {p["port"] for rule in evaluator["egress"] for p in rule["ports"]} == {53, 5432, 6379, 6380, 9091}


def test_render_prints_exactly_the_children(tmp_path: Path) -> None:
    env = tmp_path / ".env.production"
    env.write_text("DATABASE_URL=postgresql://a:b@c/d\nREDIS_URL=redis://e\n")
    result = subprocess.run(
        [sys.executable, "-m", "learner_operator.cli", "render", "-f", str(EXAMPLES / "03-production.yaml"),
         "--secret-env-file", str(env)], capture_output=True, text=True, check=True,
    )
    docs = yamlio.load_all(result.stdout)
    expected = render([load(EXAMPLES / "03-production.yaml")],
                      {"DATABASE_URL": b"postgresql://a:b@c/d", "REDIS_URL": b"redis://e"})
    assert docs == expected
    assert len(docs) == len(builders.children(platform(load(EXAMPLES / "03-production.yaml")["spec"])))
    assert "postgresql://a:b@c/d" not in result.stdout


def test_render_refuses_an_invalid_spec_with_the_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "learner_operator.cli", "render", "-f",
         str(EXAMPLES / "invalid" / "requests-above-limits.yaml")], capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "resources.requests.cpu must be less than or equal to resources.limits.cpu (2 is above 500m)" in (
        result.stderr)
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


def test_the_evaluator_reads_the_alert_rules_the_operator_writes() -> None:
    """The operator and the evaluator ship in different images; their rule formats must agree."""
    from learner_api.evaluator import rules as evaluator_rules
    from learner_operator.builders import config
    from learner_operator.models.v1alpha1 import AlertSignal

    def platform_of(path: Path) -> builders.Platform:
        return platform(load(path)["spec"])

    assert set(typing.get_args(AlertSignal)) == set(evaluator_rules.SIGNALS)
    assert config.default_alert_rules() == (Path(evaluator_rules.__file__).parent / "default_rules.yaml").read_text()
    for example in EXAMPLE_FILES:
        manifests = builders.children(platform_of(example))
        [rules_map] = [m for m in manifests if m["metadata"]["name"].endswith("-alert-rules")]
        loaded = evaluator_rules.loads(rules_map["data"]["alert-rules.yaml"], example.name)
        wanted = [rule.alert for rule in platform_of(example).spec.evaluator.alert_rules] or \
            evaluator_rules.load(None).names
        assert loaded.names == wanted
        pod = next(m for m in manifests if m["kind"] == "Deployment" and "evaluator" in m["metadata"]["name"])
        container = pod["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "ALERT_RULES_FILE", "value": "/etc/learner-platform/alert-rules/alert-rules.yaml"} in \
            container["env"]
        assert {"name": "alert-rules", "mountPath": "/etc/learner-platform/alert-rules", "readOnly": True} in \
            container["volumeMounts"]
    rendered = config.alert_rules_yaml(platform_of(EXAMPLES / "03-production.yaml"))
    production = [r for r in evaluator_rules.loads(rendered, "x").rules if r.alert == "TenantQuiet"]
    assert (production[0].for_, production[0].above) == (1800.0, 7200.0)


def test_the_largest_alert_rules_the_crd_admits_fit_in_their_config_map(crd: dict[str, Any]) -> None:
    """The API server refuses a ConfigMap over 1 MiB of data; the CRD's bounds (read from it here) must keep the
    worst spec it admits under that, with room to spare. Worst: every bound reached, and every character of a
    value one PyYAML writes as a 10-byte escape."""
    rules_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "evaluator"]["properties"]["alertRules"]
    fields = rules_schema["items"]["properties"]
    assert {"maxProperties", "additionalProperties"} <= set(fields["labels"]) | set(fields["annotations"]), \
        "labels and annotations need bounds"
    worst = "\U0010FFFF"

    def entries(field: str) -> dict[str, str]:
        bound = fields[field]
        return {f"n{i}_{'x' * 63}"[:63]: worst * bound["additionalProperties"]["maxLength"]
                for i in range(bound["maxProperties"])}

    rules = [{"alert": f"R{i}{'x' * 100}"[:fields["alert"]["maxLength"]], "signal": "unfulfilled_purchases",
              "above": -2.2250738585072014e-308, "for": "999999h999999m9999s"[:fields["for"]["maxLength"]],
              "labels": entries("labels"), "annotations": entries("annotations")}
             for i in range(rules_schema["maxItems"])]
    doc = {**load(EXAMPLES / "01-minimal.yaml")}
    doc["spec"] = {**doc["spec"], "evaluator": {"alertRules": rules}}
    stored, errors = admit(crd, doc)
    assert errors == []
    [config_map] = [m for m in builders.children(platform(stored["spec"]))
                    if m["metadata"]["name"].endswith("-alert-rules")]
    size = sum(len(key.encode()) + len(value.encode()) for key, value in config_map["data"].items())
    assert size <= 0.8 * 2**20, f"{size} bytes: the CRD admits alert rules too big for a ConfigMap (1 MiB)"


def test_no_pod_of_a_deployment_migrates_or_holds_the_owners_url() -> None:
    """The migration Job migrates (tests/test_migration_job.py); the serving pods only check the schema."""
    for path in EXAMPLE_FILES:
        for template in pod_templates(builders.children(platform(load(path)["spec"]))):
            assert "initContainers" not in template["spec"]
            for container in template["spec"]["containers"]:
                assert "migrate" not in container.get("args", [])
                assert "DATABASE_MIGRATION_URL" not in {e["name"] for e in container.get("env", [])}


def test_changing_alert_rules_rolls_the_evaluator_and_nothing_else() -> None:
    def templates(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        manifests = builders.children(platform({"image": {"tag": "abc"}, "evaluator": {"alertRules": rules}}))
        return {m["metadata"]["name"]: m["spec"]["template"] for m in manifests if m["kind"] == "Deployment"}

    before = templates([])
    after = templates([{"alert": "Lag", "signal": "ingest_lag_seconds", "above": 30}])
    assert before["ai-platform-learner-api"] == after["ai-platform-learner-api"]
    key = "learner.dev/alert-rules-hash"
    assert before["ai-platform-evaluator"]["metadata"]["annotations"][key] != \
        after["ai-platform-evaluator"]["metadata"]["annotations"][key]


def test_every_child_kind_is_in_exactly_one_apply_wave() -> None:
    from learner_operator.builders import APPLY_WAVES, CHILD_KINDS, ONE_SHOT_KINDS

    waves = [kind for wave in APPLY_WAVES for kind in wave]
    assert sorted(waves) == sorted(kind.kind for kind in CHILD_KINDS if kind.kind not in ONE_SHOT_KINDS)


#: Which Secret keys reach which container (and nothing else). Written out here on purpose: changing
#: the builders' table must be a decision that changes this test too.
SECRET_KEYS_BY_CONTAINER = {
    "migrate": {"DATABASE_MIGRATION_URL", "DATABASE_URL"},
    "learner-api": {"DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_PUBLIC_KEY", "PAYMENT_WEBHOOK_SECRET"},
    "evaluator": {"DATABASE_URL", "REDIS_URL", "ALERTMANAGER_URL"},
    "pushgateway": set(),
}


def containers(manifests: list[dict[str, Any]], p: builders.Platform | None = None) -> list[dict[str, Any]]:
    """Every container of the Deployments, and of the migration Job when the platform ``p`` is given."""
    templates = pod_templates(manifests) + ([builders.migration.job(p)["spec"]["template"]] if p else [])
    return [c for t in templates for c in (*t["spec"].get("initContainers", []), *t["spec"]["containers"])]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_each_container_gets_only_its_own_secret_keys(path: Path) -> None:
    seen = set()
    p = platform(load(path)["spec"])
    for container in containers(builders.children(p), p):
        refs = {e["valueFrom"]["secretKeyRef"]["key"]: e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        assert set(refs) == SECRET_KEYS_BY_CONTAINER[container["name"]], container["name"]
        # every value comes from the Secret under its own name, and only the required ones are mandatory
        assert all(e["name"] == e["valueFrom"]["secretKeyRef"]["key"] for e in container.get("env", [])
                   if "secretKeyRef" in e.get("valueFrom", {}))
        assert {k for k, ref in refs.items() if not ref.get("optional")} == \
            set(refs) & {"DATABASE_URL", "REDIS_URL"}
        assert "envFrom" not in container or all("secretRef" not in s for s in container["envFrom"])
        seen.add(container["name"])
    assert {"migrate", "learner-api"} <= seen


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_container_reports_why_it_died(path: Path) -> None:
    p = platform(load(path)["spec"])
    for container in containers(builders.children(p), p):
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", container["name"]


def test_a_digest_pins_the_image_and_the_tag_still_labels_it() -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    p = platform({"image": {"tag": "1234567", "digest": digest}})
    manifests = builders.children(p)
    for container in containers(manifests, p):
        if container["name"] != "pushgateway":
            assert container["image"] == f"ghcr.io/ai-platform/learner-api@{digest}"
    api = by_kind(manifests)[("Deployment", "ai-platform-learner-api")]
    assert api["metadata"]["labels"]["app.kubernetes.io/version"] == "1234567"
    unpinned = containers(builders.children(platform({"image": {"tag": "1234567"}})))
    assert unpinned[0]["image"] == "ghcr.io/ai-platform/learner-api:1234567"


@pytest.mark.parametrize(("spec", "data", "unmet"), [
    ({}, {"DATABASE_URL": b"x", "REDIS_URL": b"y", "JWT_SECRET": b"z"}, []),
    ({}, {"DATABASE_URL": b"x", "REDIS_URL": b"y", "JWT_PUBLIC_KEY": b"z"}, []),
    ({}, {"DATABASE_URL": b"x", "REDIS_URL": b"y", "JWT_SECRET": b""},
     ["JWT_SECRET or JWT_PUBLIC_KEY (for learner-api)"]),
    ({"environment": "development"}, {"DATABASE_URL": b"x", "REDIS_URL": b"y"}, []),
    ({}, {"DATABASE_URL": b"x", "JWT_SECRET": b"z"}, ["REDIS_URL (for learner-api, evaluator)"]),
    ({"evaluator": {"enabled": False}}, {"JWT_SECRET": b"z"},
     ["DATABASE_URL (for learner-api)", "REDIS_URL (for learner-api)"]),
])
def test_the_secret_needs_follow_the_enabled_components(spec: dict[str, Any], data: dict[str, bytes],
                                                        unmet: list[str]) -> None:
    parsed = parse_spec({"image": {"tag": "abc"}, **spec})
    assert [str(need) for need in builders.unmet_secret_needs(parsed, data)] == unmet


# -- the evaluator's autoscaling on lag (KEDA) ---------------------------------------------------

KEDA = "keda.sh/v1alpha1"
KEDA_CRDS = {doc["spec"]["names"]["kind"]: doc for doc in yaml.safe_load_all(
    (Path(__file__).parent / "crds" / "keda.yaml").read_text()) if doc}


def autoscaled_spec(**extra: Any) -> dict[str, Any]:
    return {"image": {"tag": "abc"}, "evaluator": {"replicas": 3, "autoscaling": {
        "enabled": True, "minReplicas": 2, "maxReplicas": 9, "targetLagPerReplica": 250}}, **extra}


def test_keda_crds_for_the_suite_are_what_the_api_server_accepts() -> None:
    assert set(KEDA_CRDS) == {"ScaledObject", "TriggerAuthentication"}
    for crd in KEDA_CRDS.values():
        assert validate_crd(crd) == []


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_keda_objects_are_valid_against_kedas_documented_fields(path: Path) -> None:
    for manifest in builders.children(platform(load(path)["spec"])):
        if manifest["apiVersion"] == KEDA:
            _, errors = admit(KEDA_CRDS[manifest["kind"]], manifest)
            assert errors == [], manifest["kind"]


@pytest.mark.parametrize("redis", [{}, {"cluster": True}, {"cluster": True, "progressStreamShards": 3}])
def test_the_scaled_object_reads_the_streams_the_evaluator_consumes(redis: dict[str, Any]) -> None:
    """Stream names and the consumer group as learner_api names them (a rename there must not leave KEDA
    reading a stream nobody writes), and the target as one sum over every shard."""
    from learner_api.settings import Settings
    from learner_api.streams import CONSUMER_GROUP, ProgressStreams

    spec = autoscaled_spec(redis=redis)
    so = by_kind(builders.children(platform(spec)))[("ScaledObject", "ai-platform-evaluator")]
    parsed = parse_spec(spec)
    shards = parsed.redis.progress_stream_shards if parsed.redis.cluster else 1
    expected = ProgressStreams(str(Settings.model_fields["progress_stream"].default), shards, parsed.redis.cluster)
    triggers = so["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == expected.streams
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {CONSUMER_GROUP}
    assert {t["type"] for t in triggers} == {"redis-cluster-streams" if parsed.redis.cluster else "redis-streams"}
    assert all("lagCount" in t["metadata"] and "pendingEntriesCount" not in t["metadata"] for t in triggers)
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 9)
    if len(triggers) == 1:
        assert triggers[0]["metadata"]["lagCount"] == "250"
        assert "advanced" not in so["spec"]
    else:  # the HPA takes the largest of several metrics: summed into one, the target stays per replica
        modifiers = so["spec"]["advanced"]["scalingModifiers"]
        assert modifiers["formula"] == " + ".join(t["name"] for t in triggers)
        assert (modifiers["target"], modifiers["metricType"]) == ("250", "AverageValue")


def test_keda_objects_name_the_secrets_keys_and_hold_no_value() -> None:
    secret = {**SECRET, "REDIS_ADDRESS": b"cache.example:6380", "REDIS_PASSWORD": b"s3cr3t-redis"}
    manifests = builders.children(platform(autoscaled_spec(), secret))
    ta = by_kind(manifests)[("TriggerAuthentication", "ai-platform-evaluator")]
    assert {(r["parameter"], r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]} == {
        ("address", "ai-platform-secrets", "REDIS_ADDRESS"), ("username", "ai-platform-secrets", "REDIS_USERNAME"),
        ("password", "ai-platform-secrets", "REDIS_PASSWORD")}
    so = by_kind(manifests)[("ScaledObject", "ai-platform-evaluator")]
    assert {t["authenticationRef"]["name"] for t in so["spec"]["triggers"]} == {"ai-platform-evaluator"}
    rendered = yamlio.dump_all(manifests)
    for value in secret.values():
        assert value.decode() not in rendered
    # No container gets the scaler's keys: they are KEDA's alone.
    for container in containers(manifests):
        assert not {e["name"] for e in container.get("env", [])} & {"REDIS_ADDRESS", "REDIS_PASSWORD"}


def test_with_a_scaled_object_the_evaluator_leaves_replicas_to_kedas_hpa() -> None:
    manifests = by_kind(builders.children(platform(autoscaled_spec())))
    assert "replicas" not in manifests[("Deployment", "ai-platform-evaluator")]["spec"]
    assert "replicas" not in manifests[("Deployment", "ai-platform-learner-api")]["spec"]  # its own HPA's
    off = by_kind(builders.children(platform({**autoscaled_spec(), "evaluator": {"replicas": 3}})))
    assert off[("Deployment", "ai-platform-evaluator")]["spec"]["replicas"] == 3
    assert not {kind for kind, _ in off} & {"ScaledObject", "TriggerAuthentication"}


@pytest.mark.parametrize("unserved", [{"ScaledObject", "TriggerAuthentication"}, {"TriggerAuthentication"}])
def test_without_kedas_api_the_fixed_replicas_apply(unserved: set[str]) -> None:
    manifests = builders.children(platform(autoscaled_spec()), unserved=unserved)
    assert not {m["kind"] for m in manifests} & {"ScaledObject", "TriggerAuthentication"}
    assert by_kind(manifests)[("Deployment", "ai-platform-evaluator")]["spec"]["replicas"] == 3


def test_no_keda_objects_for_a_disabled_evaluator() -> None:
    spec = autoscaled_spec()
    spec["evaluator"]["enabled"] = False
    assert not {m["apiVersion"] for m in builders.children(platform(spec))} & {KEDA}


def test_keda_kinds_are_optional_watched_and_applied_after_their_references() -> None:
    kinds = {kind.kind: kind for kind in builders.CHILD_KINDS}
    for name in ("ScaledObject", "TriggerAuthentication"):
        assert kinds[name].api_version == KEDA
        assert plural_of(name) == kinds[name].plural
        assert name in builders.OPTIONAL_KINDS
    assert {k.kind for k in builders.AUTOSCALER_KINDS} == {"ScaledObject", "TriggerAuthentication"}
    waves = [next(i for i, wave in enumerate(builders.APPLY_WAVES) if kind in wave)
             for kind in ("TriggerAuthentication", "ScaledObject", "Deployment")]
    assert waves[0] < waves[1] == waves[2]


def test_tls_for_kedas_connection_follows_the_environment() -> None:
    """Outside development the pods refuse a plain redis:// URL, so KEDA connects with TLS there too."""
    for environment, tls in (("production", "true"), ("staging", "true"), ("development", "false")):
        so = by_kind(builders.children(platform(autoscaled_spec(environment=environment))))[
            ("ScaledObject", "ai-platform-evaluator")]
        assert {t["metadata"]["enableTLS"] for t in so["spec"]["triggers"]} == {tls}


def test_redis_cluster_mode_reaches_the_pods_and_one_server_keeps_its_config() -> None:
    one = by_kind(builders.children(platform({"image": {"tag": "abc"}})))[("ConfigMap", "ai-platform-config")]
    assert not {"REDIS_CLUSTER", "PROGRESS_STREAM_SHARDS"} & set(one["data"])
    spec = {"image": {"tag": "abc"}, "redis": {"cluster": True, "progressStreamShards": 6}}
    config = by_kind(builders.children(platform(spec)))[("ConfigMap", "ai-platform-config")]
    assert (config["data"]["REDIS_CLUSTER"], config["data"]["PROGRESS_STREAM_SHARDS"]) == ("true", "6")


def test_the_redis_address_is_needed_only_where_keda_will_read_it() -> None:
    parsed = parse_spec(autoscaled_spec())
    data = {"DATABASE_URL": b"x", "REDIS_URL": b"y", "JWT_SECRET": b"z"}
    assert builders.unmet_secret_needs(parsed, data) == []
    assert [str(n) for n in builders.unmet_secret_needs(parsed, data, autoscaler=True)] == [
        "REDIS_ADDRESS (for KEDA's scaler of the evaluator)"]
    assert builders.unmet_secret_needs(parsed, {**data, "REDIS_ADDRESS": b"h:6379"}, autoscaler=True) == []


def test_evaluator_autoscaling_is_off_by_default_and_min_within_max() -> None:
    assert not parse_spec({"image": {"tag": "abc"}}).evaluator.autoscaling.enabled
    with pytest.raises(InvalidSpec, match=r"evaluator\.autoscaling\.minReplicas"):
        parse_spec({"image": {"tag": "abc"}, "evaluator": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}})
    with pytest.raises(InvalidSpec):
        parse_spec({"image": {"tag": "abc"}, "evaluator": {"autoscaling": {"minReplicas": 0}}})


def test_a_canary_is_a_second_deployment_behind_the_same_service() -> None:
    p = platform(load(EXAMPLES / "02-staging.yaml")["spec"])
    image = p.spec.image.model_copy(update={"tag": "v2"})
    manifests = by_kind(builders.children(dataclasses.replace(p, canary=builders.CanaryPlan(image, 1))))
    stable, canary = manifests[("Deployment", "ai-platform-learner-api")], \
        manifests[("Deployment", "ai-platform-learner-api-canary")]
    service = manifests[("Service", "ai-platform-learner-api")]
    pod_labels = canary["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()  # the Service sends it its share
    assert pod_labels["learner.dev/track"] == "canary"
    assert canary["spec"]["selector"]["matchLabels"]["learner.dev/track"] == "canary"
    assert "learner.dev/track" not in stable["spec"]["template"]["metadata"]["labels"]
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v2")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] != \
        canary["spec"]["template"]["spec"]["containers"][0]["image"]
    assert canary["metadata"]["ownerReferences"] == stable["metadata"]["ownerReferences"]


@pytest.mark.parametrize(("weight", "stable", "canary"), [(10, 2, 1), (50, 2, 2), (10, 18, 2), (90, 1, 9)])
def test_canary_replicas_take_the_weights_share_of_all_pods(weight: int, stable: int, canary: int) -> None:
    from learner_operator.models.rollout import canary_replicas

    assert canary_replicas(weight, stable) == canary
