"""What a real API server does that the operator and the tests meet, on either backend.

Each of these is a place where the emulator once answered otherwise than kube-apiserver v1.36 (issue 21:
the suite on a real control plane): run on the emulator they check that it still answers as the server
does; run with ``KUBEBUILDER_ASSETS`` they check that claim against the server itself.
"""

from __future__ import annotations

import datetime
from typing import Any

import kmock
import pytest

from learner_operator.kube import ResourceRef
from learner_operator.kube.client import ApiError
from tests.conftest import EXAMPLES, load
from tests.operator_harness import NS, AnyCluster, eventually, operator_api
from tests.real_cluster import MADE_BY_TESTS

LEASE = ("coordination.k8s.io/v1", "leases")
LP = ("learner.dev/v1alpha1", "learnerplatforms")


def _lease(renewed: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": NS},
            "spec": {"holderIdentity": "someone", "leaseDurationSeconds": 15, "renewTime": renewed}}


def test_a_lease_time_without_microseconds_cannot_be_decoded(cluster: AnyCluster) -> None:
    now = datetime.datetime.now(datetime.UTC)
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.put(_lease(now.strftime("%Y-%m-%dT%H:%M:%SZ")))
    assert (refused.value.status, refused.value.reason) == (400, "BadRequest")
    assert "2006-01-02T15:04:05.000000Z07:00" in str(refused.value.message)
    cluster.put(_lease(now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")))  # MicroTime: six digits
    assert cluster.get(*LEASE, NS, "l") is not None


def test_an_unknown_field_is_refused_when_strict_and_dropped_otherwise(cluster: AnyCluster) -> None:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["metadata"]["namespace"] = NS
    doc["spec"]["learnerApi"] = {"replica": 3}
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.put(doc)  # fieldValidation=Strict, as kubectl sends it
    assert (refused.value.status, refused.value.reason) == (400, "BadRequest")
    assert 'strict decoding error: unknown field "spec.learnerApi.replica"' in str(refused.value.message)
    del doc["spec"]["learnerApi"]
    cluster.put(doc)
    # A merge patch without fieldValidation: the server's default (Warn) drops the field.
    edited = cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                          {"spec": {"learnerApi": {"replica": 3, "replicas": 4}}})
    assert "replica" not in edited["spec"]["learnerApi"]
    assert edited["spec"]["learnerApi"]["replicas"] == 4


@pytest.mark.needs_controller("the root-ca-cert-publisher and serviceaccount controllers")
async def test_every_namespace_holds_objects_nobody_here_made(cluster: AnyCluster) -> None:
    """kube-controller-manager's: tests that look at a whole namespace must select what the operator made."""
    await eventually(lambda: cluster.get("v1", "configmaps", NS, "kube-root-ca.crt"), what="kube-root-ca.crt")
    await eventually(lambda: cluster.get("v1", "serviceaccounts", NS, "default"), what="the default ServiceAccount")
    for plural, name in (("configmaps", "kube-root-ca.crt"), ("serviceaccounts", "default")):
        assert "ownerReferences" not in (cluster.get("v1", plural, NS, name) or {})["metadata"]


def test_lists_come_in_name_order_not_creation_order(cluster: AnyCluster) -> None:
    for name in ("ai-platform-migrate-9e530e98", "ai-platform-migrate-44810b83", "b-later"):
        cluster.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS},
                     "data": {"k": "v"}})
    names = [obj["metadata"]["name"] for obj in cluster.all("v1", "configmaps", NS)]
    assert names == sorted(names)


def _service(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": NS, "labels": {MADE_BY_TESTS: "true"}},  # for the reset
            "spec": {"selector": {"app": "s"}, "ports": list(ports)}}


async def test_an_apply_keeps_the_live_order_of_a_keyed_list_and_the_service_is_validated_after(
    cluster: AnyCluster,
) -> None:
    """Service ports are merged by port and protocol: an entry another manager made stays where it is, and
    an applied port that comes beside it under the same name is refused."""
    api = await operator_api(cluster)
    ref = ResourceRef("v1", "services", NS, "s")
    try:
        await api.apply(ref, _service({"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"}),
                        manager="applier")
        cluster.edit("v1", "services", NS, "s", {"spec": {"ports": [
            {"name": "web", "port": 8080, "targetPort": 8000, "protocol": "TCP"}]}})  # `kubectl patch`: theirs
        merged = await api.apply(ref, _service({"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"}),
                                 manager="applier")
        assert [p["port"] for p in merged["spec"]["ports"]] == [8080, 80]

        cluster.edit("v1", "services", NS, "s", {"spec": {"ports": [
            {"name": "http", "port": 8081, "targetPort": 8000, "protocol": "TCP"}]}})
        with pytest.raises(ApiError) as refused:
            await api.apply(ref, _service({"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"}),
                            manager="applier")
        assert refused.value.status == 422
        assert 'spec.ports[1].name: Duplicate value: "http"' in refused.value.message
    finally:
        await api.close()


def _owned(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
    refs = [{"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"]} for o in owners]
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"},
            "metadata": {"name": name, "namespace": NS, "ownerReferences": refs}}


@pytest.mark.needs_controller("the garbage collector")
async def test_a_dependent_whose_owners_are_all_gone_is_collected_and_a_new_owner_of_that_name_is_not_one(
    cluster: AnyCluster,
) -> None:
    """The chaos soak's zombie: a replica frozen while its create was on the wire; the platform was deleted
    meanwhile, and the create landed after it, owned by a uid that no longer exists. The garbage collector
    looks owners up by uid: the platform made again under the same name does not keep it either."""
    platform = load(EXAMPLES / "01-minimal.yaml")
    platform["metadata"]["namespace"] = NS
    gone = cluster.put(platform)
    cluster.remove(*LP, NS, "ai-platform")
    cluster.put(_owned("orphan", gone))  # accepted: the server does not check owners
    await eventually(lambda: cluster.get("v1", "configmaps", NS, "orphan") is None, within=60,
                     what="the orphan collected")

    again = cluster.put(platform)
    assert again["metadata"]["uid"] != gone["metadata"]["uid"]
    cluster.put(_owned("stale", gone))
    cluster.put(_owned("kept", again))
    cluster.put(_owned("both", gone, again))  # a live owner keeps it; only the dangling reference goes
    await eventually(lambda: cluster.get("v1", "configmaps", NS, "stale") is None, within=60,
                     what="the dependent of the same name's old uid collected")

    def owners_of_both() -> list[str]:
        return [ref["uid"] for ref in (cluster.get("v1", "configmaps", NS, "both") or {})["metadata"]
                .get("ownerReferences") or []]

    await eventually(lambda: owners_of_both() == [again["metadata"]["uid"]], within=60,
                     what="the dangling owner reference removed, the object kept")
    assert cluster.get("v1", "configmaps", NS, "kept") is not None
