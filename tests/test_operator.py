"""The real operator against the `cluster` fixture's API server: what platform teams and SREs would see."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from learner_operator.builders import FIELD_MANAGER
from tests.conftest import EXAMPLES, load
from tests.kube_emulator import Cluster as Emulator
from tests.operator_harness import NS, AnyCluster, Operator, eventually, running_operator, settled

pytestmark = pytest.mark.operator

API = "ai-platform-learner-api"
EVALUATOR = "ai-platform-evaluator"


def secret(name: str = "ai-platform-secrets", **data: str) -> dict[str, Any]:
    values = data or {"DATABASE_URL": "postgresql://app:pw@db:5432/learn", "REDIS_URL": "redis://cache:6379/0"}
    values = {"JWT_SECRET": "jwt-signing-key", **values}  # learner-api needs one outside development
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "type": "Opaque", "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}


def conditions(cluster: AnyCluster, name: str = "ai-platform") -> dict[str, dict[str, Any]]:
    obj = cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, name) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def condition(cluster: AnyCluster, kind: str, name: str = "ai-platform") -> tuple[str, str] | None:
    c = conditions(cluster, name).get(kind)
    return (c["status"], c["reason"]) if c else None


def children(cluster: AnyCluster) -> set[tuple[str, str]]:
    """What the operator made (its label), so a real cluster's own objects (`default` ServiceAccount,
    `kube-root-ca.crt`, the chart's ServiceAccount) do not count."""
    kinds = [("v1", "serviceaccounts"), ("v1", "configmaps"), ("v1", "services"), ("apps/v1", "deployments"),
             ("autoscaling/v2", "horizontalpodautoscalers"), ("policy/v1", "poddisruptionbudgets"),
             ("networking.k8s.io/v1", "networkpolicies"), ("monitoring.coreos.com/v1", "servicemonitors")]
    return {(obj["kind"], obj["metadata"]["name"]) for av, plural in kinds for obj in cluster.all(av, plural, NS)
            if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == FIELD_MANAGER}


@pytest.fixture
async def operator(cluster: AnyCluster) -> AsyncIterator[Operator]:
    async with running_operator(cluster) as op:
        yield op


async def test_create_makes_every_child_and_reports_conditions(cluster: AnyCluster, operator: Operator) -> None:
    cluster.put(secret())
    cluster.put(load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: len(children(cluster)) == 12, what="12 children")
    assert children(cluster) == {
        ("ServiceAccount", API), ("ServiceAccount", EVALUATOR), ("ConfigMap", "ai-platform-config"),
        ("ConfigMap", "ai-platform-alert-rules"),
        ("NetworkPolicy", API), ("NetworkPolicy", EVALUATOR), ("Service", API), ("Service", EVALUATOR),
        ("Deployment", API), ("Deployment", EVALUATOR), ("HorizontalPodAutoscaler", API),
        ("PodDisruptionBudget", API),
    }
    await eventually(lambda: condition(cluster, "SecretReady") == ("True", "SecretFound"))
    # No pods yet: the platform is not ready, and says why.
    assert condition(cluster, "Ready") == ("False", "MinimumReplicasUnavailable")
    cluster.scale(NS, API, 2)  # the HPA's minimum
    cluster.set_deployment_status(NS, API)
    cluster.set_deployment_status(NS, EVALUATOR)
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"))
    status = cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")["status"]
    assert status["observedGeneration"] == 1
    assert status["learnerApi"]["ready"] == "2/2"
    assert set(conditions(cluster)) == {"Ready", "SecretReady", "LearnerApiAvailable", "EvaluatorAvailable",
                                        "Progressing", "Degraded", "Migrated"}


async def ready_platform(cluster: AnyCluster, operator: Operator, doc: dict[str, Any] | None = None) -> None:
    """Create the Secret and a platform, play the HPA and the Deployment controller, wait for Ready."""
    cluster.put(secret())
    cluster.put(doc or load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, API), what="learner-api Deployment")
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, EVALUATOR), what="evaluator Deployment")
    cluster.scale(NS, API, 2)
    cluster.set_deployment_status(NS, API)
    cluster.set_deployment_status(NS, EVALUATOR)
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"), what="Ready")
    await settled(cluster, operator)


def platform_doc(**spec: Any) -> dict[str, Any]:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["spec"].update(spec)
    return doc


def api_container(cluster: AnyCluster) -> dict[str, Any]:
    deployment = cluster.get("apps/v1", "deployments", NS, API) or {}
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


async def test_spec_change_rolls_children_and_observed_generation(cluster: AnyCluster, operator: Operator) -> None:
    await ready_platform(cluster, operator)
    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                 {"spec": {"image": {"tag": "feedface"}, "environment": "staging",
                           "learnerApi": {"autoscaling": {"maxReplicas": 6}}}})
    await eventually(lambda: api_container(cluster)["image"] == "ghcr.io/ai-platform/learner-api:feedface")
    hpa = await eventually(lambda: (cluster.get("autoscaling/v2", "horizontalpodautoscalers", NS, API) or {})
                           .get("spec", {}).get("maxReplicas") == 6)
    assert hpa
    config = cluster.get("v1", "configmaps", NS, "ai-platform-config") or {}
    assert config["data"]["NODE_ENV"] == "staging"
    # The new template is not rolled out yet: the platform says so, for the new generation.
    await eventually(lambda: condition(cluster, "Ready") == ("False", "RolloutInProgress"))
    status = cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")["status"]
    assert status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])
    cluster.set_deployment_status(NS, API)
    cluster.set_deployment_status(NS, EVALUATOR)
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"))


async def test_a_deleted_child_is_recreated(cluster: AnyCluster, operator: Operator) -> None:
    await ready_platform(cluster, operator)
    for api_version, plural, name in [("v1", "services", API), ("apps/v1", "deployments", EVALUATOR),
                                      ("networking.k8s.io/v1", "networkpolicies", API)]:
        cluster.remove(api_version, plural, NS, name)
        await eventually(lambda av=api_version, p=plural, n=name: cluster.get(av, p, NS, n),
                         what=f"{plural}/{name} recreated")


@pytest.mark.parametrize("edit", [
    pytest.param({"spec": {"template": {"spec": {"containers": [{"name": "learner-api", "image": "evil:latest"}]}}}},
                 id="image"),
    pytest.param({"spec": {"template": {"metadata": {"annotations": {"learner.dev/secret-hash": "x"}}}}},
                 id="annotation"),
    pytest.param({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}}}, id="strategy"),
])
async def test_an_edited_child_is_restored(cluster: AnyCluster, operator: Operator, edit: dict[str, Any]) -> None:
    await ready_platform(cluster, operator)
    before = cluster.get("apps/v1", "deployments", NS, API) or {}
    cluster.edit("apps/v1", "deployments", NS, API, edit)
    await eventually(lambda: (cluster.get("apps/v1", "deployments", NS, API) or {})["spec"]["template"]
                     == before["spec"]["template"] and
                     (cluster.get("apps/v1", "deployments", NS, API) or {})["spec"].get("strategy")
                     == before["spec"].get("strategy"), what="Deployment restored")


async def test_replicas_are_restored_without_the_hpa_and_left_to_it_with(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await ready_platform(cluster, operator)
    cluster.scale(NS, API, 7)  # what the HPA does under load
    await settled(cluster, operator)
    assert (cluster.get("apps/v1", "deployments", NS, API) or {})["spec"]["replicas"] == 7

    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                 {"spec": {"learnerApi": {"replicas": 3, "autoscaling": {"enabled": False}}}})
    await eventually(lambda: (cluster.get("apps/v1", "deployments", NS, API) or {})["spec"]["replicas"] == 3)
    await eventually(lambda: cluster.get("autoscaling/v2", "horizontalpodautoscalers", NS, API) is None,
                     what="HPA pruned")
    cluster.scale(NS, API, 9)  # someone scales by hand
    await eventually(lambda: (cluster.get("apps/v1", "deployments", NS, API) or {})["spec"]["replicas"] == 3,
                     what="replicas restored")


async def test_missing_secret_is_a_condition_then_converges(cluster: AnyCluster, operator: Operator) -> None:
    cluster.put(load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: condition(cluster, "SecretReady") == ("False", "SecretNotFound"))
    assert condition(cluster, "Ready") == ("False", "SecretNotFound")
    assert condition(cluster, "Degraded") == ("True", "SecretNotFound")
    message = conditions(cluster)["SecretReady"]["message"]
    assert "kubectl -n learning create secret generic ai-platform-secrets --from-env-file" in message
    assert children(cluster) == set()  # nothing that could not start is created
    events = [e for e in cluster.all("v1", "events", NS) if e.get("reason") == "SecretNotFound"]
    assert events
    assert events[0]["type"] == "Warning"

    cluster.put(secret())
    await eventually(lambda: condition(cluster, "SecretReady") == ("True", "SecretFound"))
    await eventually(lambda: len(children(cluster)) == 12)


async def test_missing_keys_are_named_and_values_never_shown(cluster: AnyCluster, operator: Operator) -> None:
    cluster.put(secret(DATABASE_URL="postgresql://app:topsecret@db/learn"))
    cluster.put(load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: condition(cluster, "SecretReady") == ("False", "SecretKeysMissing"))
    message = conditions(cluster)["SecretReady"]["message"]
    assert "REDIS_URL" in message
    assert "DATABASE_URL" not in message
    everything = repr(cluster.all("learner.dev/v1alpha1", "learnerplatforms")) + repr(cluster.all("v1", "events"))
    assert "topsecret" not in everything


async def test_rotating_the_secret_rolls_the_pods(cluster: AnyCluster, operator: Operator) -> None:
    await ready_platform(cluster, operator)

    def secret_hash(name: str) -> str:
        deployment = cluster.get("apps/v1", "deployments", NS, name) or {}
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["learner.dev/secret-hash"])

    before = secret_hash(API), secret_hash(EVALUATOR)
    cluster.put(secret(DATABASE_URL="postgresql://app:rotated@db:5432/learn", REDIS_URL="redis://cache:6379/0"))
    await eventually(lambda: secret_hash(API) != before[0] and secret_hash(EVALUATOR) != before[1],
                     what="both pod templates changed")
    # A Secret nobody references changes nothing.
    await settled(cluster, operator)
    count = len(cluster.mutating_requests())
    cluster.put(secret(name="someone-elses"))
    await settled(cluster, operator)
    assert len(cluster.mutating_requests()) == count


async def test_paused_makes_no_writes(cluster: AnyCluster, operator: Operator) -> None:
    await ready_platform(cluster, operator)
    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform", {"spec": {"paused": True}})
    await eventually(lambda: condition(cluster, "Ready") == ("False", "Paused"))
    await settled(cluster, operator)
    start = len(cluster.log)
    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                 {"spec": {"paused": True, "image": {"tag": "not-while-paused"}}})
    cluster.remove("v1", "services", NS, API)
    await settled(cluster, operator)
    # Only the platform's own status moves (observedGeneration); no child is written.
    writes = cluster.mutating_requests(start)
    assert [(r.resource.plural, r.subresource) for r in writes] == [("learnerplatforms", "status")]
    assert condition(cluster, "Ready") == ("False", "Paused")
    assert "not-while-paused" not in api_container(cluster)["image"]
    assert cluster.get("v1", "services", NS, API) is None

    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform", {"spec": {"paused": False}})
    await eventually(lambda: cluster.get("v1", "services", NS, API), what="Service back after resuming")
    await eventually(lambda: api_container(cluster)["image"].endswith(":not-while-paused"))


async def test_switching_off_the_evaluator_deletes_it(cluster: AnyCluster, operator: Operator) -> None:
    await ready_platform(cluster, operator)
    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                 {"spec": {"evaluator": {"enabled": False}}})
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, EVALUATOR) is None, what="evaluator gone")
    for api_version, plural in [("v1", "services"), ("v1", "serviceaccounts"),
                                ("networking.k8s.io/v1", "networkpolicies")]:
        assert cluster.get(api_version, plural, NS, EVALUATOR) is None
    assert cluster.get("v1", "configmaps", NS, "ai-platform-alert-rules") is None
    assert cluster.get("v1", "configmaps", NS, "ai-platform-config") is not None
    assert cluster.get("apps/v1", "deployments", NS, API) is not None
    await eventually(lambda: condition(cluster, "EvaluatorAvailable") == ("True", "Disabled"))
    assert condition(cluster, "Ready") == ("True", "AllComponentsReady")


@pytest.mark.emulator_only("stores an object without admission, as an older CRD would have let it through")
async def test_an_unservable_spec_is_reported_and_others_are_still_served(
    cluster: Emulator, operator: Operator,
) -> None:
    cluster.put(secret())
    broken = load(EXAMPLES / "invalid" / "requests-above-limits.yaml")  # refused by today's CRD, not a 1.x one
    cluster.crd, crd = None, cluster.crd
    cluster.put(broken)
    cluster.crd = crd
    healthy = load(EXAMPLES / "01-minimal.yaml")
    healthy["metadata"]["name"] = "healthy"
    cluster.put(healthy)

    await eventually(lambda: condition(cluster, "Ready") == ("False", "InvalidSpec"))
    assert "resources.requests.cpu must be less than or equal to resources.limits.cpu (2 is above 500m)" in conditions(
        cluster)["Ready"]["message"]
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, "healthy-learner-api"), what="healthy served")
    assert cluster.get("apps/v1", "deployments", NS, API) is None
    assert operator.alive

    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                 {"spec": {"learnerApi": {"resources": {"requests": {"cpu": "100m"}}}}})
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, API), what="fixed spec served")


@pytest.mark.emulator_only("stores an object without admission, as an older CRD would have let it through")
async def test_a_spec_an_older_crd_let_through_is_reported(cluster: Emulator, operator: Operator) -> None:
    cluster.put(secret())
    cluster.crd, crd = None, cluster.crd
    slipped = platform_doc(learnerApi={"autoscaling": {"minReplicas": 9, "maxReplicas": 3}})
    slipped["metadata"]["name"] = "slipped"
    cluster.put(slipped)
    cluster.crd = crd
    await eventually(lambda: condition(cluster, "Ready", "slipped") == ("False", "InvalidSpec"))
    assert "minReplicas (9) must be less than or equal" in conditions(cluster, "slipped")["Ready"]["message"]
    assert operator.alive


@pytest.mark.needs_controller("the garbage collector")
async def test_deleting_the_platform_deletes_its_children(cluster: AnyCluster, operator: Operator) -> None:
    await ready_platform(cluster, operator)
    uid = cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")["metadata"]["uid"]
    owners = {obj["metadata"]["ownerReferences"][0]["uid"] for obj in
              cluster.all("apps/v1", "deployments", NS) + cluster.all("v1", "services", NS)}
    assert owners == {uid}
    cluster.remove("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")
    # A real garbage collector learns a brand-new CRD's kind when its monitors resync: up to ~40 s.
    await eventually(lambda: children(cluster) == set(), within=60, what="every child collected")
    await settled(cluster, operator)
    assert children(cluster) == set()
    assert (cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")) is None


@pytest.mark.emulator_only("kmock fault injection")
async def test_apply_failures_are_reported_and_retried(cluster: Emulator, operator: Operator) -> None:
    failing = True

    def flaky(request: kmock.Request) -> Any:
        if failing:
            return kmock.KubernetesError(status=500, reason="InternalError", message="etcdserver: request timed out")
        raise NotImplementedError  # fall through to the emulator's normal behaviour

    cluster.put(secret())
    cluster["patch", kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")] << flaky
    cluster.put(load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "ApplyFailed"))
    assert "HorizontalPodAutoscaler ai-platform-learner-api: etcdserver: request timed out" in \
        conditions(cluster)["Degraded"]["message"]
    assert cluster.get("apps/v1", "deployments", NS, API) is not None  # the rest was applied
    assert operator.alive
    failing = False
    await eventually(lambda: cluster.get("autoscaling/v2", "horizontalpodautoscalers", NS, API), within=20,
                     what="HPA applied on a retry")
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"))


@pytest.mark.emulator_only("kmock fault injection")
async def test_an_annotation_set_while_the_status_is_written_is_acted_on(
    cluster: Emulator, operator: Operator,
) -> None:
    """An SRE's learner.dev/ annotation that lands just before the operator's status write comes back in that
    write's answer; the annotation's own watch event then looks older than what the operator knows. It must
    still be acted on (here: a retry asked for a migration that has not failed is acknowledged, i.e. removed)."""
    await ready_platform(cluster, operator)
    annotated: list[bool] = []

    def annotate_first(request: kmock.Request) -> Any:
        if request.subresource == "status" and not annotated:
            annotated.append(True)
            cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                         {"metadata": {"annotations": {"learner.dev/retry-migration": "true"}}})
        raise NotImplementedError  # on to the emulator's own handling of the status write

    cluster["patch", kmock.resource("learner.dev", "v1alpha1", "learnerplatforms")] << annotate_first
    cluster.set_deployment_status(NS, API, ready=0)  # the operator writes the status (learner-api unavailable)
    await eventually(lambda: annotated, what="the status write")

    def annotations() -> dict[str, str]:
        platform = cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform") or {}
        return dict(platform.get("metadata", {}).get("annotations") or {})

    await eventually(lambda: "learner.dev/retry-migration" not in annotations(), what="the annotation acted on")


async def test_write_budget_create_noop_and_drift_repair(cluster: AnyCluster, operator: Operator) -> None:
    """Create <= children + the migration Job + 1 status write; a no-op resync writes nothing; one drifted child
    costs one write."""
    cluster.put(secret())
    start = len(cluster.log)
    cluster.put(load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: condition(cluster, "SecretReady") == ("True", "SecretFound"))
    await settled(cluster, operator)
    writes = cluster.mutating_requests(start)
    applies = [r for r in writes if r.headers.get("Content-Type", "").startswith("application/apply-patch")]
    assert len(applies) == len(children(cluster)) == 12
    assert [(r.resource.plural, r.subresource) for r in writes if r not in applies] == [
        ("jobs", None), ("learnerplatforms", "status")]
    cluster.run_autoscalers(NS)  # before a real HPA controller's first sync lands in what is measured below
    await settled(cluster, operator)

    start = len(cluster.log)
    await operator.resync_now()
    await settled(cluster, operator)
    assert cluster.mutating_requests(start) == []
    reads = [r for r in cluster.log[start:] if r.method.value == "GET" and r.params.get("watch") != "true"]
    # Not even the Secret is read (its informer says it is at the version last read); the children come
    # from the caches; the platforms are compared with the server by one list.
    assert [(r.resource.plural, r.name) for r in reads if r.name] == []
    lists = sorted(r.resource.plural for r in reads if r.resource and r.resource.plural and not r.name)
    assert len(lists) == len(set(lists)) <= 10

    start = len(cluster.log)

    def retarget(service: dict[str, Any]) -> None:
        service["spec"]["ports"][0]["targetPort"] = 8081

    cluster.update("v1", "services", NS, API, retarget)  # `kubectl edit`: the field moves to their manager
    await eventually(lambda: (cluster.get("v1", "services", NS, API) or {})["spec"]["ports"][0]["targetPort"] ==
                     "http", what="targetPort restored")
    await settled(cluster, operator)
    assert [(r.resource.plural, r.name) for r in cluster.mutating_requests(start)] == [("services", API)]


async def test_a_service_port_renumbered_by_someone_else_is_reported_not_fought(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """`kubectl patch` replaces the ports list: port 80 becomes 8080, now their entry (keyed by port and
    protocol). Server-side apply cannot remove another manager's entry, so our port 80 would come beside it
    under the same name, which the server refuses: the platform says so, and recovers once the port is back."""
    await ready_platform(cluster, operator, platform_doc())
    ports = cluster.get("v1", "services", NS, API)["spec"]["ports"]
    cluster.edit("v1", "services", NS, API, {"spec": {"ports": [{**ports[0], "port": 8080}, *ports[1:]]}})
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "ApplyFailed"), what="ApplyFailed")
    message = conditions(cluster)["Degraded"]["message"]
    assert f"Service {API}:" in message
    assert 'Duplicate value: "http"' in message
    assert cluster.get("v1", "services", NS, API)["spec"]["ports"][0]["port"] == 8080  # theirs, kept
    assert operator.alive
    cluster.edit("v1", "services", NS, API, {"spec": {"ports": ports}})  # the person sets it back
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"), what="recovered")
    assert cluster.get("v1", "services", NS, API)["spec"]["ports"] == ports


async def test_the_operator_applies_exactly_what_render_prints(cluster: AnyCluster, operator: Operator) -> None:
    from learner_operator.cli import render

    cluster.put(secret())
    start = len(cluster.log)
    cluster.put(load(EXAMPLES / "03-production.yaml"))
    await eventually(lambda: len(children(cluster)) == 13)
    await settled(cluster, operator)
    applied = {(r.data["kind"], r.data["metadata"]["name"]): r.data for r in cluster.mutating_requests(start)
               if r.headers.get("Content-Type", "").startswith("application/apply-patch")}
    cr = cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")
    data = {"DATABASE_URL": b"postgresql://app:pw@db:5432/learn", "REDIS_URL": b"redis://cache:6379/0",
            "JWT_SECRET": b"jwt-signing-key"}
    rendered = {(m["kind"], m["metadata"]["name"]): m for m in render([cr], data)}
    assert applied == rendered


async def test_quantities_from_every_corner_of_the_grammar_are_served_and_rest(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """`2Ei` once crashed the models (decimal.InvalidOperation); now such a platform is served, and the server's
    canonical form of the quantities ("0.001" -> "1m", "1024Mi" -> "1Gi") is no reason to write again."""
    resources = {"requests": {"cpu": "0.001", "memory": "1024Mi"}, "limits": {"cpu": "2Ei", "memory": "1e12"}}
    await ready_platform(cluster, operator, platform_doc(learnerApi={"resources": resources},
                                                         evaluator={"enabled": True, "replicas": None}))
    limits = api_container(cluster)["resources"]["limits"]
    assert {"cpu", "memory"} <= set(limits)
    start = len(cluster.log)
    await operator.resync_now()
    await settled(cluster, operator)
    assert cluster.mutating_requests(start) == []
