"""KEDA's API (keda.sh/v1alpha1) in the `cluster` fixture's API server: installed, or taken away.

The CRDs are tests/crds/keda.yaml, written from KEDA's documented fields. On the emulator the kinds
are declared (discovery lists them) and the CRDs created (validated as kube-apiserver validates a
CRD); ``uninstall`` undeclares them, as a cluster without KEDA is. On a real API server the CRDs are
created for real and deleted again (with every object of theirs) by ``uninstall``, each waiting
until discovery says so, which is what the operator asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import yaml

from tests.kube_emulator import Cluster
from tests.real_cluster import RealCluster

KEDA_CRDS = Path(__file__).resolve().parent / "crds" / "keda.yaml"
GROUP, VERSION = "keda.sh", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CRDS = ("apiextensions.k8s.io/v1", "customresourcedefinitions")


def crds() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KEDA_CRDS.read_text()) if doc]


def _names(crd: dict[str, Any]) -> tuple[str, str]:
    names = crd["spec"]["names"]
    return str(names["plural"]), str(names["kind"])


def _discovered(cluster: RealCluster) -> set[str]:
    found = cluster.plane.rest.get(f"/apis/{API_VERSION}") or {}
    return {str(r["name"]) for r in found.get("resources") or []}


async def _until(check: Any, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.1)


async def install(cluster: Cluster | RealCluster) -> None:
    """KEDA's CRDs installed: the cluster serves ScaledObjects and TriggerAuthentications."""
    if isinstance(cluster, Cluster):
        for crd in crds():
            plural, kind = _names(crd)
            cluster.declare(GROUP, VERSION, plural, kind, shortnames=tuple(crd["spec"]["names"].get("shortNames", ())))
            cluster.create_crd(crd)
        return
    for crd in crds():
        cluster.put(crd)
    wanted = {_names(crd)[0] for crd in crds()}
    await _until(lambda: wanted <= _discovered(cluster), f"discovery serving {API_VERSION} {sorted(wanted)}")


async def uninstall(cluster: Cluster | RealCluster) -> None:
    """KEDA's CRDs gone: discovery lacks them, and so do the objects of theirs."""
    if isinstance(cluster, Cluster):
        for crd in crds():
            with contextlib.suppress(KeyError):  # never installed
                cluster.undeclare(GROUP, VERSION, _names(crd)[0])
        return
    for crd in crds():
        if cluster.get(*CRDS, None, crd["metadata"]["name"]) is not None:
            cluster.remove(*CRDS, None, crd["metadata"]["name"])
    await _until(lambda: all(cluster.get(*CRDS, None, crd["metadata"]["name"]) is None for crd in crds())
                 and not _discovered(cluster), f"{API_VERSION} gone")
