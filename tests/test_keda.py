"""The evaluator scaled on progress lag by KEDA, as the operator sees it: discovery decides.

With KEDA's API served (tests/crds/keda.yaml installed in the suite's cluster) the operator owns a
ScaledObject and the TriggerAuthentication it names, and leaves the evaluator Deployment's replicas
to KEDA's HPA; without it, the fixed replica count applies and Degraded says what to install.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from learner_operator import cli, yamlio
from learner_operator.builders import FIELD_MANAGER
from tests import keda_api
from tests.conftest import EXAMPLES, load
from tests.operator_harness import NS, AnyCluster, Operator, eventually, resync_writes, running_operator, settled
from tests.test_operator import EVALUATOR, condition, conditions, secret

pytestmark = pytest.mark.operator

LP = ("learner.dev/v1alpha1", "learnerplatforms")
SCALED_OBJECTS = (keda_api.API_VERSION, "scaledobjects")
TRIGGER_AUTHS = (keda_api.API_VERSION, "triggerauthentications")
#: Values only the Secret holds: none may show up in any other object.
REDIS_ADDRESS = "cache.internal.example:6380"
REDIS_PASSWORD = "s3cr3t-redis-passw0rd"


def keda_secret(**extra: str) -> dict[str, Any]:
    return secret(DATABASE_URL="postgresql://app:pw@db:5432/learn",
                  REDIS_URL=f"rediss://:{REDIS_PASSWORD}@{REDIS_ADDRESS}/0", **extra)


def autoscaled(**scaling: Any) -> dict[str, Any]:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["metadata"]["namespace"] = NS
    doc["spec"]["evaluator"] = {"replicas": 2, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 8,
                                                               "targetLagPerReplica": 500, **scaling}}
    return doc


def scaled_object(cluster: AnyCluster) -> dict[str, Any] | None:
    return cluster.get(*SCALED_OBJECTS, NS, EVALUATOR)


def trigger_auth(cluster: AnyCluster) -> dict[str, Any] | None:
    return cluster.get(*TRIGGER_AUTHS, NS, EVALUATOR)


def evaluator(cluster: AnyCluster) -> dict[str, Any]:
    found = cluster.get("apps/v1", "deployments", NS, EVALUATOR)
    assert found is not None
    return found


def operator_sets_replicas(deployment: dict[str, Any]) -> bool:
    """Does our apply own spec.replicas? (The server defaults the field whoever sets it, so ask managedFields.)"""
    for entry in deployment["metadata"].get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            return "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    return False


def keda_requests(cluster: AnyCluster, since: int = 0) -> list[Any]:
    return [r for r in cluster.log[since:] if r.resource is not None
            and r.resource.plural in ("scaledobjects", "triggerauthentications")]


@pytest.fixture
async def keda(cluster: AnyCluster) -> AsyncIterator[AnyCluster]:
    await keda_api.install(cluster)
    try:
        yield cluster
    finally:
        await keda_api.uninstall(cluster)


@pytest.fixture
async def with_keda(keda: AnyCluster) -> AsyncIterator[Operator]:
    """The operator started on a cluster that serves KEDA's API."""
    async with running_operator(keda) as op:
        yield op


@pytest.fixture
async def without_keda(cluster: AnyCluster) -> AsyncIterator[Operator]:
    await keda_api.uninstall(cluster)  # the suite's cluster serves no keda.sh; said here, not assumed
    async with running_operator(cluster) as op:
        yield op


async def converge(cluster: AnyCluster, operator: Operator, doc: dict[str, Any], **secret_keys: str) -> None:
    cluster.put(keda_secret(**secret_keys))
    cluster.put(doc)
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, EVALUATOR), what="evaluator Deployment")
    await settled(cluster, operator)


# -- KEDA served ---------------------------------------------------------------------------------


async def test_with_keda_the_evaluator_is_scaled_on_lag_by_a_scaled_object(
    cluster: AnyCluster, with_keda: Operator,
) -> None:
    await converge(cluster, with_keda, autoscaled(), REDIS_ADDRESS=REDIS_ADDRESS, REDIS_PASSWORD=REDIS_PASSWORD)
    so, ta = scaled_object(cluster), trigger_auth(cluster)
    assert so is not None
    assert ta is not None
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": EVALUATOR}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 8)
    [trigger] = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == "lp:progress"
    assert trigger["metadata"]["consumerGroup"] == "evaluator"
    assert trigger["metadata"]["lagCount"] == "500"
    assert trigger["metadata"]["enableTLS"] == "true"  # production: the pods themselves insist on rediss://
    assert "pendingEntriesCount" not in trigger["metadata"]
    assert trigger["authenticationRef"] == {"name": EVALUATOR}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
    assert refs == {"address": ("ai-platform-secrets", "REDIS_ADDRESS"),
                    "username": ("ai-platform-secrets", "REDIS_USERNAME"),
                    "password": ("ai-platform-secrets", "REDIS_PASSWORD")}
    for child in (so, ta):
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("LearnerPlatform", "ai-platform", True)
    # KEDA's HPA owns the evaluator's replicas; the learner-api Deployment is left as it was.
    assert not operator_sets_replicas(evaluator(cluster))
    assert condition(cluster, "SecretReady") == ("True", "SecretFound")
    assert "REDIS_ADDRESS" in conditions(cluster)["SecretReady"]["message"]
    assert condition(cluster, "Degraded") == ("False", "AsExpected")


async def test_no_secret_value_leaves_the_secret(cluster: AnyCluster, with_keda: Operator) -> None:
    """The address and password reach KEDA by reference only: not in the ScaledObject, the TriggerAuthentication,
    ConfigMaps, Deployments, the platform's status or any event."""
    await converge(cluster, with_keda, autoscaled(), REDIS_ADDRESS=REDIS_ADDRESS, REDIS_PASSWORD=REDIS_PASSWORD)
    kinds = [SCALED_OBJECTS, TRIGGER_AUTHS, ("v1", "configmaps"), ("apps/v1", "deployments"), ("v1", "events"), LP]
    text = json.dumps([cluster.all(api_version, plural, NS) for api_version, plural in kinds])
    encoded = [base64.b64encode(v.encode()).decode() for v in (REDIS_ADDRESS, REDIS_PASSWORD)]
    for value in (REDIS_ADDRESS, REDIS_PASSWORD, "cache.internal.example", *encoded):
        assert value not in text


async def test_a_redis_cluster_gets_one_trigger_per_shard_summed_into_one_target(
    cluster: AnyCluster, with_keda: Operator,
) -> None:
    doc = autoscaled()
    doc["spec"]["redis"] = {"cluster": True, "progressStreamShards": 4}
    await converge(cluster, with_keda, doc, REDIS_ADDRESS=REDIS_ADDRESS)
    so, ta = scaled_object(cluster), trigger_auth(cluster)
    assert so is not None
    assert ta is not None
    triggers = so["spec"]["triggers"]
    assert [(t["type"], t["name"], t["metadata"]["stream"]) for t in triggers] == [
        ("redis-cluster-streams", f"p{k}", f"lp:progress:{{p{k}}}") for k in range(4)]
    assert so["spec"]["advanced"]["scalingModifiers"] == {
        "formula": "p0 + p1 + p2 + p3", "target": "500", "activationTarget": "0", "metricType": "AverageValue"}
    assert {r["parameter"] for r in ta["spec"]["secretTargetRef"]} == {"addresses", "username", "password"}
    config = cluster.get("v1", "configmaps", NS, "ai-platform-config") or {}
    assert (config["data"]["REDIS_CLUSTER"], config["data"]["PROGRESS_STREAM_SHARDS"]) == ("true", "4")


@pytest.mark.parametrize("redis", [{}, {"cluster": True}], ids=["one-server", "cluster"])
async def test_an_autoscaled_evaluator_costs_no_write_at_rest(
    cluster: AnyCluster, with_keda: Operator, redis: dict[str, Any],
) -> None:
    doc = autoscaled()
    doc["spec"]["redis"] = redis
    await converge(cluster, with_keda, doc, REDIS_ADDRESS=REDIS_ADDRESS)
    assert scaled_object(cluster) is not None
    cluster.scale(NS, EVALUATOR, 5)  # what KEDA's HPA does: its field, not drift
    await settled(cluster, with_keda)
    assert await resync_writes(cluster, with_keda) == []
    assert await resync_writes(cluster, with_keda) == []
    assert evaluator(cluster)["spec"]["replicas"] == 5


async def test_a_scaled_object_edited_by_hand_is_restored_with_one_write(
    cluster: AnyCluster, with_keda: Operator,
) -> None:
    await converge(cluster, with_keda, autoscaled(), REDIS_ADDRESS=REDIS_ADDRESS)
    start = len(cluster.log)
    cluster.edit(*SCALED_OBJECTS, NS, EVALUATOR, {"spec": {"maxReplicaCount": 50}})
    await eventually(lambda: (scaled_object(cluster) or {})["spec"]["maxReplicaCount"] == 8, what="restored")
    await settled(cluster, with_keda)
    assert [(r.resource.plural, r.name) for r in cluster.mutating_requests(start)] == [("scaledobjects", EVALUATOR)]


async def test_switching_autoscaling_off_prunes_keda_objects_and_restores_replicas(
    cluster: AnyCluster, with_keda: Operator,
) -> None:
    await converge(cluster, with_keda, autoscaled(), REDIS_ADDRESS=REDIS_ADDRESS)
    assert scaled_object(cluster) is not None
    cluster.edit(*LP, NS, "ai-platform", {"spec": {"evaluator": {"autoscaling": {"enabled": False}}}})
    await eventually(lambda: scaled_object(cluster) is None and trigger_auth(cluster) is None, what="pruned")
    await eventually(lambda: operator_sets_replicas(evaluator(cluster)), what="replicas set by the operator")
    await settled(cluster, with_keda)
    assert evaluator(cluster)["spec"]["replicas"] == 2
    assert await resync_writes(cluster, with_keda) == []


async def test_a_scaled_object_held_by_kedas_finalizer_is_deleted_once(
    cluster: AnyCluster, with_keda: Operator,
) -> None:
    """KEDA keeps a ScaledObject (finalizer.keda.sh) until it has removed its HPA: the object is being
    deleted meanwhile, and every change of it is no reason to delete it again."""
    await converge(cluster, with_keda, autoscaled(), REDIS_ADDRESS=REDIS_ADDRESS)
    cluster.edit(*SCALED_OBJECTS, NS, EVALUATOR, {"metadata": {"finalizers": ["finalizer.keda.sh"]}}, manager="keda")
    await settled(cluster, with_keda)
    start = len(cluster.log)
    cluster.edit(*LP, NS, "ai-platform", {"spec": {"evaluator": {"autoscaling": {"enabled": False}}}})
    await eventually(lambda: ((scaled_object(cluster) or {}).get("metadata") or {}).get("deletionTimestamp"),
                     what="the ScaledObject being deleted")
    await settled(cluster, with_keda)
    cluster.edit(*SCALED_OBJECTS, NS, EVALUATOR, {"metadata": {"finalizers": None}}, manager="keda")  # KEDA is done
    await eventually(lambda: scaled_object(cluster) is None, what="the ScaledObject gone")
    await settled(cluster, with_keda)
    deletes = [r.resource.plural for r in cluster.mutating_requests(start) if r.method.value == "DELETE"]
    assert sorted(deletes) == ["scaledobjects", "triggerauthentications"]
    assert condition(cluster, "Degraded") == ("False", "AsExpected")


async def test_with_keda_a_secret_without_the_redis_address_is_a_condition(
    cluster: AnyCluster, with_keda: Operator,
) -> None:
    cluster.put(keda_secret())
    cluster.put(autoscaled())
    await eventually(lambda: condition(cluster, "SecretReady") == ("False", "SecretKeysMissing"), what="SecretReady")
    message = conditions(cluster)["SecretReady"]["message"]
    assert "REDIS_ADDRESS (for KEDA's scaler of the evaluator)" in message
    assert REDIS_PASSWORD not in message
    await settled(cluster, with_keda)
    assert scaled_object(cluster) is None
    cluster.put(keda_secret(REDIS_ADDRESS=REDIS_ADDRESS))
    await eventually(lambda: scaled_object(cluster) is not None, what="ScaledObject once the key is there")


# -- KEDA not served -----------------------------------------------------------------------------


async def test_without_keda_the_fixed_replicas_apply_and_degraded_says_what_to_install(
    cluster: AnyCluster, without_keda: Operator,
) -> None:
    # The Secret lacks REDIS_ADDRESS: only KEDA would read it, so without KEDA it is not needed.
    await converge(cluster, without_keda, autoscaled())
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "ApiUnavailable"), what="Degraded")
    message = conditions(cluster)["Degraded"]["message"]
    assert "keda.sh/v1alpha1 ScaledObject" in message
    assert "evaluator autoscaling is unavailable" in message
    assert "install KEDA" in message
    assert condition(cluster, "SecretReady") == ("True", "SecretFound")
    deployment = evaluator(cluster)
    assert operator_sets_replicas(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert keda_requests(cluster) == []  # no write that could only fail, and no read either
    # Serving all the same: Ready does not turn False for it.
    cluster.scale(NS, "ai-platform-learner-api", 2)
    cluster.set_deployment_status(NS, "ai-platform-learner-api")
    cluster.set_deployment_status(NS, EVALUATOR)
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"), what="Ready")
    await settled(cluster, without_keda)
    assert await resync_writes(cluster, without_keda) == []


async def test_keda_installed_later_is_noticed_at_the_next_resync(cluster: AnyCluster, without_keda: Operator) -> None:
    await converge(cluster, without_keda, autoscaled(), REDIS_ADDRESS=REDIS_ADDRESS)
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "ApiUnavailable"), what="Degraded")
    assert operator_sets_replicas(evaluator(cluster))
    try:
        await keda_api.install(cluster)
        await without_keda.resync_now()
        await eventually(lambda: scaled_object(cluster) is not None and trigger_auth(cluster) is not None,
                         what="KEDA objects after the resync")
        await eventually(lambda: not operator_sets_replicas(evaluator(cluster)), what="replicas left to KEDA")
        await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"), what="Degraded cleared")
        await settled(cluster, without_keda)
        # Now watched like every other child: a deleted ScaledObject comes back without a resync.
        cluster.remove(*SCALED_OBJECTS, NS, EVALUATOR)
        await eventually(lambda: scaled_object(cluster) is not None, what="ScaledObject restored")
        await settled(cluster, without_keda)
        assert await resync_writes(cluster, without_keda) == []
    finally:
        await keda_api.uninstall(cluster)


# -- render: no cluster to ask -------------------------------------------------------------------


def test_render_assumes_keda_is_served_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(autoscaled()))
    assert cli.main(["render", "-f", str(path)]) == 0
    out, err = capsys.readouterr()
    kinds = {m["kind"]: m for m in yamlio.load_all(out)}
    assert {"ScaledObject", "TriggerAuthentication"} <= set(kinds)
    assert "keda.sh/v1alpha1 ScaledObject" in err
    assert "--without-api keda.sh/v1alpha1" in err
    assert cli.main(["render", "-f", str(path), "--without-api", "keda.sh/v1alpha1"]) == 0
    out, err = capsys.readouterr()
    manifests = yamlio.load_all(out)
    assert not {"ScaledObject", "TriggerAuthentication"} & {m["kind"] for m in manifests}
    [deployment] = [m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == EVALUATOR]
    assert deployment["spec"]["replicas"] == 2
    assert err == ""


def test_render_warns_about_a_missing_redis_address_only_where_keda_would_read_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path, env = tmp_path / "platform.yaml", tmp_path / ".env.production"
    path.write_text(yaml.safe_dump(autoscaled()))
    env.write_text(f"DATABASE_URL=postgresql://a:b@c/d\nREDIS_URL=rediss://:{REDIS_PASSWORD}@x:6380\nJWT_SECRET=k\n")
    assert cli.main(["render", "-f", str(path), "--secret-env-file", str(env)]) == 0
    err = capsys.readouterr().err
    assert "lacks REDIS_ADDRESS (for KEDA's scaler of the evaluator)" in err
    assert REDIS_PASSWORD not in err
    without = ["--without-api", "keda.sh/v1alpha1"]
    assert cli.main(["render", "-f", str(path), "--secret-env-file", str(env), *without]) == 0
    assert "REDIS_ADDRESS" not in capsys.readouterr().err
