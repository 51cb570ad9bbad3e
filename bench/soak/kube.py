"""The Kubernetes side of the soak: the API server (the tests' emulator in this process, or a real control
plane from envtest's binaries), the calls the soak makes to it, its faults, and the controllers it lacks.

Everything else in the soak reaches Kubernetes through a ``KubeSide``: its ``cluster`` (``KubeApi``: the
emulator's test-facing methods, which tests/real_cluster.py offers over HTTPS too), ``call`` (the soak's
blocking cluster calls, run in a thread when they are network calls), and the three API server faults.
``Controllers`` plays the Job controller, the HPA and the Deployment controller through ``KubeApi`` alone,
so the same play runs on both backends (RealCluster plays the kubelet instead where kube-controller-manager
runs, as in the tests).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import httpx
import kmock

from bench.soak.common import LEASE, LEASE_NS, NAMESPACES
from learner_api.migrate import bundled
from learner_operator.models import FIELD_MANAGER
from tests.audit_log import MUTATING
from tests.conftest import CRD_FILE, load
from tests.control_plane import Binaries, ControlPlane
from tests.controllers import autoscaler_first_sync
from tests.kube_emulator import Cluster, standard_cluster
from tests.kube_rest import Rest
from tests.operator_harness import operator_kubeconfig
from tests.pki import write_pki
from tests.real_cluster import RealCluster

CHILD_PLURALS = {"serviceaccounts": "v1", "configmaps": "v1", "services": "v1", "deployments": "apps/v1",
                 "horizontalpodautoscalers": "autoscaling/v2", "poddisruptionbudgets": "policy/v1",
                 "networkpolicies": "networking.k8s.io/v1", "jobs": "batch/v1",
                 "servicemonitors": "monitoring.coreos.com/v1"}
#: What a call to the API can meet while it restarts or is away: the soak's play tries again next time.
KUBE_ERRORS = (httpx.HTTPError, kmock.KubernetesError, AssertionError, RuntimeError)
#: What the garbage collector removes with an owner: its children, and theirs (ReplicaSets, pods).
_DEPENDENTS = [*((v, p) for p, v in CHILD_PLURALS.items()), ("apps/v1", "replicasets"), ("v1", "pods")]

T = TypeVar("T")


class KubeApi(Protocol):
    """The calls the soak makes to the cluster: the emulator's ``Cluster`` and tests/real_cluster.py's
    ``RealCluster`` both offer them (missing objects: None from ``get``, KeyError or a 404 elsewhere)."""

    @property
    def log(self) -> list[kmock.Request]: ...

    def mutating_requests(self, since: int = 0) -> list[kmock.Request]: ...

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    def all(self, api_version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]: ...

    def put(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    def edit(self, api_version: str, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        ...

    def update(self, api_version: str, plural: str, namespace: str, name: str,
               mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]: ...

    def remove(self, api_version: str, plural: str, namespace: str, name: str) -> None: ...

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]: ...

    def set_deployment_status(self, namespace: str, name: str) -> dict[str, Any]: ...

    def finish_job(self, namespace: str, name: str, *, succeeded: bool, message: str) -> dict[str, Any]: ...


class KubeSide(Protocol):
    """The Kubernetes side of the system. ``serving`` holds the API up for the run; ``kubeconfig`` is what the
    operator replicas connect with; ``cluster`` what the soak reads, plays controllers in, churns and faults,
    through ``call``. The faults: ``drop_watches`` (every watch ends), ``restart`` (the API server restarts;
    ``seconds``: how long watches meet 429/410 where that is played), ``outage`` (away for ``seconds``);
    ``restart_stops_api``: whether every request fails during a restart (a real one), not only watches."""

    name: str
    restart_stops_api: bool
    #: Seconds between the soak's passes over the cluster (play, churn, convergence): each pass is tens of
    #: list requests, which over HTTP the API server (the emulator: in the soak's own loop) must serve.
    pass_seconds: float

    @property
    def cluster(self) -> KubeApi: ...

    def serving(self) -> contextlib.AbstractAsyncContextManager[KubeApi]: ...

    def kubeconfig(self, folder: Path) -> Path: ...

    async def call(self, fn: Callable[[], T]) -> T: ...

    async def drop_watches(self) -> None: ...

    async def restart(self, seconds: float) -> None: ...

    async def outage(self, seconds: float) -> None: ...


class Emulator:
    """The tests' Kubernetes API emulator, served in this process; ``cluster`` is its store, called in place
    (it is the event loop's: no thread may touch it)."""

    name = "emulator"
    restart_stops_api = False
    pass_seconds = 0.5

    def __init__(self) -> None:
        self._cluster: Cluster = standard_cluster(load(CRD_FILE))

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Cluster]:
        async with self._cluster, kmock.Server(self._cluster):
            yield self._cluster
            self._cluster.hang_up()  # the operators' watches end before the server does

    def kubeconfig(self, folder: Path) -> Path:
        return operator_kubeconfig(self._cluster, folder)

    async def call(self, fn: Callable[[], T]) -> T:
        return fn()

    async def drop_watches(self) -> None:
        self._cluster.hang_up()

    async def restart(self, seconds: float) -> None:
        async with self._cluster.watch_gap():
            await asyncio.sleep(seconds)

    async def outage(self, seconds: float) -> None:
        async with self._cluster.watch_gap(down=True):
            await asyncio.sleep(seconds)


class SoakCluster(RealCluster):
    """RealCluster as the soak needs it: ``remove`` returns once the owner's dependents are gone, as on the
    emulator (whose garbage collector runs inside the delete), so a child still there afterwards was made
    again. The real garbage collector is waited for where kube-controller-manager runs; without it, the
    dependents are deleted here, as it would."""

    def remove(self, api_version: str, plural: str, namespace: str, name: str, timeout: float = 60.0) -> None:
        owner = self.get(api_version, plural, namespace, name)
        if owner is None:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{plural} {namespace}/{name}")
        super().remove(api_version, plural, namespace, name)
        self.collect(namespace, owner["metadata"]["uid"], timeout)

    def dependents(self, namespace: str, uid: str) -> list[tuple[str, str, str]]:
        """(apiVersion, plural, name) of what ``uid`` owns in ``namespace`` and is not being deleted already
        (kinds the server does not serve skipped)."""
        out = []
        for api_version, plural in _DEPENDENTS:
            try:
                found = self.all(api_version, plural, namespace)
            except kmock.KubernetesError as exc:
                if exc.status == 404:
                    continue
                raise
            out += [(api_version, plural, obj["metadata"]["name"]) for obj in found
                    if not obj["metadata"].get("deletionTimestamp")
                    and any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])]
        return out

    def collect(self, namespace: str, uid: str, timeout: float) -> None:
        def gone() -> bool:
            left = self.dependents(namespace, uid)
            if not self.has_controllers:
                for api_version, plural, name in left:
                    with contextlib.suppress(kmock.KubernetesError):  # gone meanwhile
                        self.remove(api_version, plural, namespace, name)
                return True
            return not left

        self._wait_for(gone, f"the dependents of {uid} in {namespace} collected", timeout=timeout)


class RealPlane:
    """A real control plane on loopback (tests/control_plane.py: etcd, kube-apiserver, kube-controller-manager
    when KUBEBUILDER_ASSETS has it), in the soak's folder, set up as ``helm install -n soak-system`` leaves
    it: the CRDs, the chart's ServiceAccount and RBAC (cluster-wide: the operator serves every namespace; its
    Lease in its own). The soak calls it over HTTPS as cluster-admin, from a thread; the operator's writes
    are read from the audit log. Its data lives and dies with the soak's folder, so stopping it is the
    cleanup: nothing outside the folder was made."""

    name = "real control plane"
    restart_stops_api = True
    pass_seconds = 1.0

    def __init__(self, binaries: Binaries, folder: Path) -> None:
        self.plane = ControlPlane(binaries, folder, load(CRD_FILE), namespace=LEASE_NS, audit_level="Metadata")
        self._cluster = SoakCluster(self.plane)
        self.name = f"real control plane ({'with' if self.plane.has_controllers else 'without'} " \
                    "kube-controller-manager)"

    @property
    def cluster(self) -> SoakCluster:
        return self._cluster

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SoakCluster]:
        await asyncio.to_thread(self.plane.start)
        try:
            yield self._cluster
        finally:
            await asyncio.to_thread(self.plane.stop)

    def kubeconfig(self, folder: Path) -> Path:
        return self.plane.operator_kubeconfig

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    async def drop_watches(self) -> None:
        """A real server ends its watches when it shuts down: SIGTERM, then started again."""
        await asyncio.to_thread(self.plane.restart_apiserver, signal.SIGTERM)

    async def restart(self, seconds: float) -> None:
        """kill -9 and started again at once (its start takes seconds: the 429s and 410s are its own)."""
        await asyncio.to_thread(self.plane.restart_apiserver, signal.SIGKILL)

    async def outage(self, seconds: float) -> None:
        """kill -9, away for ``seconds``, started again."""
        await asyncio.to_thread(self.plane.stop_apiserver, signal.SIGKILL)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(self.plane.start_apiserver)


class _ServedEmulator:
    """What ``SoakCluster`` reads of its plane, for the emulator's served URL (``rest`` once it serves)."""

    namespace = LEASE_NS
    has_controllers = False
    operator_user = "the emulator's operator"

    def __init__(self, cluster: Cluster, folder: Path) -> None:
        self.cluster, self.folder = cluster, folder
        self.audit_log = folder / "no-audit.log"  # never written: the operator's requests are the emulator's log
        self._rest: Rest | None = None

    @property
    def url(self) -> str:
        return str(self.cluster.url).rstrip("/")

    @property
    def rest(self) -> Rest:
        if self._rest is None:
            pki = write_pki(self.folder / "pki")  # Rest needs a client certificate; over HTTP it goes unused
            self._rest = Rest(self.url, pki.ca_cert, pki.admin_cert, pki.admin_key)
        return self._rest


class _RestOverEmulator(SoakCluster):
    """The real control plane's client on the emulator's HTTP API, with two differences the emulator forces:
    kmock parses no Namespace path (the soak's namespaces are made in place before), and the operator's
    requests are the emulator's log, told from the soak's own by the operator's token."""

    def __init__(self, served: _ServedEmulator) -> None:
        super().__init__(cast("ControlPlane", served))
        self.served = served
        self._read = 0
        self._operators: list[kmock.Request] = []

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj if obj["kind"] == "Namespace" else super().put(obj)

    @property
    def log(self) -> list[kmock.Request]:
        """The operator's requests (it sends a token; the soak's client none), read on from the last look."""
        served = self.served.cluster.log
        self._operators += [r for r in served[self._read:] if any(k.lower() == "authorization" for k in r.headers)]
        self._read = len(served)
        return self._operators

    def mutating_requests(self, since: int = 0) -> list[kmock.Request]:
        return [r for r in self.log[since:] if r.method.value in MUTATING]


class EmulatorOverRest:
    """The emulator, called by the soak as it calls a real control plane (``--kube emulator-rest``): through
    the real side's client (RealCluster's REST, SoakCluster's garbage collection), from a thread, so that
    the real side's code runs here without envtest's binaries. The faults stay the emulator's; its 429s
    and 503s now reach the soak's calls too, as a real server's would."""

    name = "emulator, called over REST as a real control plane"
    restart_stops_api = False
    pass_seconds = 2.0

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.emulator = Emulator()
        self._served = _ServedEmulator(self.emulator.cluster, folder)
        self._cluster = _RestOverEmulator(self._served)

    @property
    def cluster(self) -> SoakCluster:
        return self._cluster

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SoakCluster]:
        store = self.emulator.cluster
        async with self.emulator.serving():
            for ns in (*NAMESPACES, LEASE_NS):
                store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            # kmock serves no PUT: a replace (RealCluster.put/update) is done in place, unconditionally.
            store["put"] << (lambda request: store.put(request.data))
            try:
                yield self._cluster
            finally:
                self._served.rest.close()

    def kubeconfig(self, folder: Path) -> Path:
        return self.emulator.kubeconfig(folder)

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    async def drop_watches(self) -> None:
        await self.emulator.drop_watches()

    async def restart(self, seconds: float) -> None:
        await self.emulator.restart(seconds)

    async def outage(self, seconds: float) -> None:
        await self.emulator.outage(seconds)


def real_binaries(choice: str | None) -> Binaries | None:
    """envtest's binaries when the soak runs on a real control plane: ``choice`` "real", or None and
    KUBEBUILDER_ASSETS set; None for the emulator. A ValueError says why a real one cannot run."""
    binaries = Binaries.from_environment() if choice in (None, "real") else None
    if choice == "real" and binaries is None:
        raise ValueError("--kube real needs KUBEBUILDER_ASSETS naming envtest's binaries (etcd, kube-apiserver; "
                         "`setup-envtest use -p path 1.36.x`)")
    return binaries


def kube_side(choice: str | None, folder: Path) -> KubeSide:
    """The Kubernetes API the soak runs against (see ``real_binaries``)."""
    binaries = real_binaries(choice)
    if choice == "emulator-rest":
        return EmulatorOverRest(folder / "emulator-rest")
    if binaries is None:
        return Emulator()
    return RealPlane(binaries, folder / "control-plane")


class Controllers:
    """What the soak reads from and plays in the cluster: the Job controller (a migration succeeds), the HPA
    (its first sync: replicas into [minReplicas, maxReplicas]), the Deployment controller; the platforms,
    their children and the operator's leader. Objects gone meanwhile are skipped (next pass)."""

    def __init__(self, cluster: KubeApi) -> None:
        self.cluster = cluster

    def prepare(self) -> None:
        for ns in (*NAMESPACES, LEASE_NS):
            self.cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        data = {"DATABASE_URL": "postgresql://learner:soak@db.invalid:5432/learn?sslmode=require",
                "REDIS_URL": "rediss://:soak@cache.invalid:6380/0", "JWT_SECRET": "soak-signing-key-0123456789abcdef"}
        for ns in NAMESPACES:
            self.cluster.put({"apiVersion": "v1", "kind": "Secret",
                              "metadata": {"name": "ai-platform-secrets", "namespace": ns},
                              "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def play_controllers(self) -> None:
        """One pass of the Job controller, the HPA and the Deployment controller."""
        cluster = self.cluster
        version = bundled()[-1].version
        gone = (KeyError, kmock.KubernetesError)
        for ns in NAMESPACES:
            for job in cluster.all("batch/v1", "jobs", ns):
                if not (job.get("status") or {}).get("conditions"):
                    with contextlib.suppress(*gone):
                        cluster.finish_job(ns, job["metadata"]["name"], succeeded=True,
                                           message=f"learner-api migrate: schema version {version} (applied all)")
            hpas = {h["spec"]["scaleTargetRef"]["name"]: h
                    for h in cluster.all("autoscaling/v2", "horizontalpodautoscalers", ns)}
            for deployment in cluster.all("apps/v1", "deployments", ns):
                name = deployment["metadata"]["name"]
                with contextlib.suppress(*gone):
                    # A Deployment made without replicas has 1 (the real server writes it; the emulator not).
                    desired = autoscaler_first_sync(hpas[name], int(deployment["spec"].get("replicas", 1))) \
                        if name in hpas else None
                    if desired is not None:
                        deployment = cluster.scale(ns, name, desired)
                    status = deployment.get("status") or {}
                    if status.get("observedGeneration") != deployment["metadata"].get("generation") or \
                            status.get("readyReplicas") != deployment["spec"].get("replicas", 1):
                        cluster.set_deployment_status(ns, name)

    def platforms(self) -> list[dict[str, Any]]:
        return [lp for ns in NAMESPACES for lp in self.cluster.all("learner.dev/v1alpha1", "learnerplatforms", ns)]

    def owned(self) -> dict[str, set[tuple[str, str]]]:
        """(kind, name) of every object owned by a LearnerPlatform, by the owner's uid."""
        out: dict[str, set[tuple[str, str]]] = {}
        for plural, api_version in CHILD_PLURALS.items():
            for ns in NAMESPACES:
                for obj in self.cluster.all(api_version, plural, ns):
                    for ref in obj["metadata"].get("ownerReferences") or []:
                        if ref.get("kind") == "LearnerPlatform":
                            out.setdefault(ref["uid"], set()).add((obj["kind"], obj["metadata"]["name"]))
        return out

    def unowned_children(self) -> list[str]:
        """The operator's children (its managed-by label) that no LearnerPlatform owns: no garbage collector
        ever removes those. Jobs and pods are the controllers' play, not the operator's children."""
        found = []
        for plural, api_version in CHILD_PLURALS.items():
            for ns in NAMESPACES:
                for obj in self.cluster.all(api_version, plural, ns):
                    meta = obj["metadata"]
                    managed = (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == FIELD_MANAGER
                    refs = [r for r in meta.get("ownerReferences") or [] if r.get("kind") == "LearnerPlatform"]
                    if managed and not refs:
                        found.append(f"{obj['kind']} {ns}/{meta['name']}")
        return found

    def leader(self) -> str:
        lease = self.cluster.get("coordination.k8s.io/v1", "leases", LEASE_NS, LEASE) or {}
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        return holder.replace("replica-", "operator-") if holder else ""
