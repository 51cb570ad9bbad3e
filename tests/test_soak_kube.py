"""The soak's Kubernetes side (bench/soak/kube.py) where it can run without envtest's binaries: its choice of
backend, and the real control plane's client (``SoakCluster``, RealCluster's HTTPS facade) driving the
soak's controller play against the emulator's HTTP API, so that what differs on a real server is only the
server. What needs kube-apiserver itself (starting it, its restarts and outages, the audit log it writes)
runs where KUBEBUILDER_ASSETS is set."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from bench.soak.common import LEASE, LEASE_NS, NAMESPACES, UNSERVED
from bench.soak.kube import Controllers, Emulator, RealPlane, SoakCluster, kube_side
from learner_operator.builders import children
from learner_operator.builders.common import Platform
from learner_operator.models import LearnerPlatformSpec
from tests.conftest import EXAMPLES, load
from tests.control_plane import OPERATOR_SERVICE_ACCOUNT
from tests.kube_emulator import Cluster
from tests.kube_rest import Rest
from tests.pki import Pki, write_pki

ROOT = Path(__file__).resolve().parent.parent


def envtest(folder: Path, *names: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


def test_the_backend_is_the_emulator_unless_envtests_binaries_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    assert isinstance(kube_side(None, tmp_path), Emulator)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(envtest(tmp_path / "bin", "etcd", "kube-apiserver")))
    chosen = kube_side(None, tmp_path)
    assert isinstance(chosen, RealPlane)
    assert chosen.name == "real control plane (without kube-controller-manager)"
    assert chosen.plane.namespace == LEASE_NS  # the chart's Role for the Lease is in the operator's namespace
    assert chosen.plane.folder == tmp_path / "control-plane"  # the cleanup is the soak's folder
    assert isinstance(kube_side("emulator", tmp_path), Emulator)


def test_a_real_control_plane_without_envtest_refuses_in_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "bench.soak", "--kube", "real", "--minutes", "0.1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert run.stdout == ""
    [line] = run.stderr.splitlines()
    assert "KUBEBUILDER_ASSETS" in line
    assert "envtest" in line


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


class OverHttp(SoakCluster):
    """kmock parses no Namespace path (/api/v1/namespaces): those the test makes in place beforehand."""

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj if obj["kind"] == "Namespace" else super().put(obj)


@pytest.fixture
async def over_http(cluster: Cluster, pki: Pki, tmp_path: Path) -> AsyncIterator[SoakCluster]:
    """The real control plane's client, pointed at the emulator's served URL (the soak's namespaces made)."""
    for ns in (*NAMESPACES, LEASE_NS):
        cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    rest = Rest(str(cluster.url).rstrip("/"), pki.ca_cert, pki.admin_cert, pki.admin_key)
    plane = types.SimpleNamespace(rest=rest, namespace=LEASE_NS, audit_log=tmp_path / "audit.log",
                                  operator_user=f"system:serviceaccount:{LEASE_NS}:{OPERATOR_SERVICE_ACCOUNT}",
                                  has_controllers=False, url=str(cluster.url))
    cluster["put"] << (lambda request: cluster.put(request.data))  # the emulator serves no PUT: replace in-process
    try:
        yield OverHttp(plane)  # type: ignore[arg-type]
    finally:
        rest.close()


def platform_with_children(cluster: Cluster, over_http: SoakCluster, namespace: str, name: str) -> dict[str, Any]:
    """A LearnerPlatform made over HTTP, and the children the operator would make for it (in place)."""
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["metadata"] = {"name": name, "namespace": namespace}
    lp = over_http.put(doc)
    platform = Platform(name, namespace, lp["metadata"]["uid"], LearnerPlatformSpec.model_validate(lp["spec"]))
    for manifest in children(platform, unserved=UNSERVED):
        cluster.put(manifest)
    return lp


@pytest.mark.emulator_only("drives the emulator's HTTP API with the real control plane's client")
async def test_the_soaks_controller_play_over_https_does_what_it_does_in_place(
    cluster: Cluster, over_http: SoakCluster,
) -> None:
    play = Controllers(over_http)

    def set_up() -> list[dict[str, Any]]:
        play.prepare()
        return [platform_with_children(cluster, over_http, ns, f"lp-{i}") for i, ns in enumerate(NAMESPACES)]

    lps = await asyncio.to_thread(set_up)  # blocking HTTP; the emulator is this loop's
    assert all(cluster.get("v1", "secrets", ns, "ai-platform-secrets") for ns in NAMESPACES)

    await asyncio.to_thread(play.play_controllers)
    for ns in NAMESPACES:
        jobs = cluster.all("batch/v1", "jobs", ns)
        for job in jobs:
            assert {c["type"] for c in job["status"]["conditions"]} >= {"Complete"}, job["metadata"]["name"]
            assert [p for p in cluster.all("v1", "pods", ns)
                    if p["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]]
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in cluster.all("autoscaling/v2",
                                                                                  "horizontalpodautoscalers", ns)}
        for deployment in cluster.all("apps/v1", "deployments", ns):
            spec, status = deployment["spec"], deployment["status"]
            assert status["readyReplicas"] == spec.get("replicas", 1)
            assert status["observedGeneration"] == deployment["metadata"]["generation"]
            if bounds := hpas.get(deployment["metadata"]["name"]):
                assert bounds.get("minReplicas", 1) <= spec["replicas"] <= bounds["maxReplicas"]
    # What the soak reads back is the same over HTTPS as in place.
    in_place = Controllers(cluster)
    assert await asyncio.to_thread(play.owned) == in_place.owned()
    assert {lp["metadata"]["uid"] for lp in lps} <= set(in_place.owned())
    assert [lp["metadata"]["uid"] for lp in await asyncio.to_thread(play.platforms)] == \
        [lp["metadata"]["uid"] for lp in in_place.platforms()]
    cluster.put({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": LEASE, "namespace": LEASE_NS}, "spec": {"holderIdentity": "replica-2"}})
    assert await asyncio.to_thread(play.leader) == "operator-2"
    # A second pass has nothing left to play: it writes nothing.
    start = len(cluster.log)
    await asyncio.to_thread(play.play_controllers)
    assert cluster.mutating_requests(start) == []

    # Deleting a platform returns once its children are gone, as in place.
    ns, uid = lps[0]["metadata"]["namespace"], lps[0]["metadata"]["uid"]
    await asyncio.to_thread(over_http.remove, "learner.dev/v1alpha1", "learnerplatforms", ns, "lp-0")
    assert uid not in in_place.owned()
    with pytest.raises(kmock.KubernetesError) as gone:
        await asyncio.to_thread(over_http.remove, "learner.dev/v1alpha1", "learnerplatforms", ns, "lp-0")
    assert gone.value.status == 404


@pytest.mark.emulator_only("drives the emulator's HTTP API with the real control plane's client")
async def test_without_a_garbage_collector_the_soak_plays_it(cluster: Cluster, over_http: SoakCluster) -> None:
    """Dependents of an owner that is gone (the emulator collects its own at once: these name an owner it never
    had) are deleted, theirs too, as kube-controller-manager's garbage collector would."""
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gone", "uid": "uid-gone", "controller": True}
    cluster.put({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "orphan", "namespace": NAMESPACES[0], "ownerReferences": [owner]}})
    cluster.put({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "bystander", "namespace": NAMESPACES[0]}})
    assert [d[2] for d in await asyncio.to_thread(over_http.dependents, NAMESPACES[0], "uid-gone")] == ["orphan"]
    await asyncio.to_thread(over_http.collect, NAMESPACES[0], "uid-gone", 10.0)
    assert cluster.get("v1", "configmaps", NAMESPACES[0], "orphan") is None
    assert cluster.get("v1", "configmaps", NAMESPACES[0], "bystander") is not None
