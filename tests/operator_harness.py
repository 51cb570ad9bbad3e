"""Run the real operator (kopf.operator, our handlers) against the `cluster` fixture's API server.

On the emulator it connects to the plain-HTTP URL; on a real API server with the kubeconfig of the
chart's ServiceAccount (its CA and token), so RBAC is the chart's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kopf
import yaml

from learner_operator.handlers import LeaseConfig, OperatorConfig, Runtime, register
from learner_operator.kube import KubeApi
from learner_operator.kube.backoff import EndlessBackoffs
from learner_operator.kube.client import connect
from tests.conftest import NAMESPACE
from tests.kube_emulator import Cluster
from tests.real_cluster import RealCluster

NS = NAMESPACE
#: What the `cluster` fixture yields: both have the same test-facing methods.
AnyCluster = Cluster | RealCluster


def connection(cluster: AnyCluster) -> tuple[kopf.ConnectionInfo, dict[str, Any]]:
    """How the operator reaches ``cluster``: kopf's login, and the OperatorConfig fields for its own client."""
    if isinstance(cluster, RealCluster):
        plane = cluster.plane
        return (kopf.ConnectionInfo(server=plane.url, ca_path=str(plane.pki.ca_cert), token=plane.operator_token),
                {"kubeconfig": str(plane.operator_kubeconfig)})
    url = str(cluster.url).rstrip("/")
    return kopf.ConnectionInfo(server=url, insecure=True), {"api_host": url}


async def operator_api(cluster: AnyCluster) -> KubeApi:
    """A client with the operator's identity (on a real API server: the chart's ServiceAccount)."""
    _, where = connection(cluster)
    return await connect(where.get("api_host"), kubeconfig=where.get("kubeconfig"))


def operator_kubeconfig(cluster: AnyCluster, folder: Path) -> Path:
    """A kubeconfig for `learner-operator run` as a process: the emulator's URL, or the ServiceAccount's."""
    if isinstance(cluster, RealCluster):
        return cluster.operator_kubeconfig
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": str(cluster.url).rstrip("/")}}],
        "users": [{"name": "operator", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
    }))
    return path


class Operator:
    """The operator running in a thread of its own, with its own event loop, as in production.

    kopf treats every task created in its loop after startup as its own and waits for them when it
    stops; sharing the test's loop would make it wait for (and then cancel) pytest's fixture tasks.
    """

    def __init__(self, cluster: AnyCluster, resync_seconds: float = 300.0, lease: LeaseConfig | None = None,
                 namespaces: tuple[str, ...] = (), api_backoffs: EndlessBackoffs | None = None) -> None:
        self.memo = kopf.Memo()
        self._backoffs = api_backoffs or EndlessBackoffs()  # production's, unless a test scales it
        self._namespaces = namespaces  # empty: every namespace
        self._lease = lease
        self._login, self._where = connection(cluster)
        self._resync = resync_seconds
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        registry = kopf.OperatorRegistry()

        def login(**_: Any) -> kopf.ConnectionInfo:
            return self._login

        self._config = OperatorConfig(**self._where, metrics_port=None, resync_seconds=self._resync, workers=4,
                                      retry_after_error=0.5, leader_election=self._lease, verify_delay=0.1,
                                      namespaces=self._namespaces, api_backoffs=self._backoffs)
        register(registry, self._config, login=login)

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            # kopf itself stays cluster-wide even with ``namespaces``: a namespaced kopf lists /api/v1/namespaces,
            # which kmock cannot route. The operator's own scoping (informers, verify) is what is tested.
            await kopf.operator(registry=registry, settings=kopf.OperatorSettings(), clusterwide=True,
                                standalone=True, memo=self.memo, stop_flag=self._stop, ready_flag=self._ready)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test through .error / .alive
            self.error = exc

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.memo["runtime"]
        return runtime

    async def _call(self, fn: Callable[[], Any]) -> Any:
        assert self._loop is not None

        async def call() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self._loop))

    async def idle(self) -> None:
        """Until the operator's work queue is empty, no reconcile runs and no comparison with the server is due."""
        await self._call(self.runtime.wait_idle)

    async def resync_now(self) -> None:
        """What the periodic resync does: compare the caches with the server, reconcile every platform."""
        await self._call(lambda: self.runtime.resync(self._config))

    async def start(self) -> None:
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 60)  # generous: parallel workers on a busy machine
        if not self._ready.is_set():
            raise RuntimeError(f"the operator did not start: {self.error!r}")

    @property
    def writes(self) -> int:
        """Mutating requests this operator's reconciler has sent."""
        return self.runtime.deps.api.counter.mutating

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 20)


@contextlib.asynccontextmanager
async def running_operator(cluster: AnyCluster, *, resync_seconds: float = 300.0,
                           namespaces: tuple[str, ...] = (),
                           api_backoffs: EndlessBackoffs | None = None) -> AsyncIterator[Operator]:
    operator = Operator(cluster, resync_seconds, namespaces=namespaces, api_backoffs=api_backoffs)
    await operator.start()
    try:
        yield operator
    finally:
        await operator.stop()


async def eventually(check: Callable[[], Any], *, within: float = 30.0, what: str = "") -> Any:
    """Poll until ``check()`` returns something truthy; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.05)


def _activity(cluster: AnyCluster) -> int:
    """Requests so far, less leader-election renewals (they never stop while replicas run)."""
    return sum(1 for r in cluster.log if r.resource is None or r.resource.plural != "leases")


async def settled(cluster: AnyCluster, operator: Operator, *, quiet: float = 0.5, within: float = 45.0) -> None:
    """Until the operator has been idle and the cluster unwritten-to for ``quiet`` seconds."""
    deadline = time.monotonic() + within
    count, since = _activity(cluster), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await operator.idle()
        if (now := _activity(cluster)) != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("the operator did not settle")


async def resync_writes(cluster: AnyCluster, operator: Operator) -> list[tuple[str, str]]:
    """The mutating requests (kind, name) that one full resync of a settled operator sends."""
    start = len(cluster.log)
    await operator.resync_now()
    await settled(cluster, operator)
    return [(r.resource.plural if r.resource else str(r.url), str(r.name)) for r in cluster.mutating_requests(start)]
