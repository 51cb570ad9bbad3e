"""`learner-operator run` processes killed without warning (SIGKILL): nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, load
from tests.net import free_port
from tests.operator_harness import NS, AnyCluster, eventually, operator_kubeconfig
from tests.test_operator import secret

pytestmark = pytest.mark.operator
KINDS = [("v1", "serviceaccounts"), ("v1", "configmaps"), ("v1", "services"), ("apps/v1", "deployments"),
         ("autoscaling/v2", "horizontalpodautoscalers"), ("policy/v1", "poddisruptionbudgets"),
         ("networking.k8s.io/v1", "networkpolicies")]


def owned_children(cluster: AnyCluster) -> dict[str, list[str]]:
    """Children by the platform that owns them. A namespace also holds what is no platform's (the `default`
    ServiceAccount and `kube-root-ca.crt` of kube-controller-manager, the chart's ServiceAccount): not counted."""
    out: dict[str, list[str]] = {}
    for api_version, plural in KINDS:
        for obj in cluster.all(api_version, plural, NS):
            for owner in obj["metadata"].get("ownerReferences") or []:
                if owner["kind"] == "LearnerPlatform" and owner.get("controller"):
                    out.setdefault(owner["name"], []).append(f"{obj['kind']}/{obj['metadata']['name']}")
    return out


@contextlib.asynccontextmanager
async def operator_process(cluster: AnyCluster, tmp_path: Path, identity: str, *extra: str) -> AsyncIterator[Any]:
    folder = tmp_path / identity
    folder.mkdir()
    env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig(cluster, folder)), "POD_NAME": identity}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    command = shutil.which("learner-operator", path=str(Path(os.sys.executable).parent))  # type: ignore[attr-defined]
    assert command
    process = await asyncio.create_subprocess_exec(
        command, "run", "--all-namespaces", "--lease-namespace", NS, "--lease-seconds", "3",
        "--liveness", f"http://127.0.0.1:{free_port()}/healthz", "--metrics-port", str(free_port()), *extra,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def platform(name: str) -> dict[str, Any]:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["metadata"]["name"] = name
    return doc


async def test_killed_while_creating_20_platforms_a_restart_converges_them_all_once(
    cluster: AnyCluster, tmp_path: Path,
) -> None:
    cluster.put(secret())
    names = [f"p{i:02d}" for i in range(20)]
    async with operator_process(cluster, tmp_path, "first") as first:
        for name in names:
            cluster.put(platform(name))
        await eventually(lambda: len(owned_children(cluster)) >= 3, within=30, what="some platforms under way")
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert len(owned_children(cluster)) < 20 or sum(map(len, owned_children(cluster).values())) < 240, \
        "the kill came too late to interrupt anything"
    async with operator_process(cluster, tmp_path, "second"):
        await eventually(lambda: sorted(owned_children(cluster)) == names and all(
            len(kids) == 12 for kids in owned_children(cluster).values()), within=60, what="all 20 converged")
        await eventually(lambda: all(
            (cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, n) or {}).get("status", {}).get(
                "observedGeneration") == 1 for n in names), within=30, what="every status written")
    for kids in owned_children(cluster).values():
        assert len(kids) == len(set(kids)) == 12


async def test_the_leader_killed_hard_is_replaced_when_its_lease_runs_out(cluster: AnyCluster, tmp_path: Path) -> None:
    cluster.put(secret())

    def holder() -> str:
        lease = cluster.get("coordination.k8s.io/v1", "leases", NS, "learner-platform-operator") or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    async with operator_process(cluster, tmp_path, "replica-a") as first:
        await eventually(lambda: holder() == "replica-a", within=30, what="replica-a leads")
        async with operator_process(cluster, tmp_path, "replica-b"):
            cluster.put(platform("before"))
            await eventually(lambda: len(owned_children(cluster).get("before", [])) == 12, within=30)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            cluster.put(platform("after"))  # nobody leads until the dead leader's Lease expires
            await eventually(lambda: holder() == "replica-b", within=30, what="replica-b takes over")
            await eventually(lambda: len(owned_children(cluster).get("after", [])) == 12, within=30,
                             what="the new leader serves the platform created meanwhile")
