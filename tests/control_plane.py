"""A real control plane on loopback, from envtest's binaries, for the tests and the operator benchmark.

Used only when ``KUBEBUILDER_ASSETS`` names a folder holding ``etcd`` and ``kube-apiserver`` (and,
optionally, ``kube-controller-manager``: then garbage collection and the Deployment, ReplicaSet and
HPA controllers run), e.g. the folder ``setup-envtest use -p path 1.36.x`` prints. Everything lives in
one work folder: ``pki/`` (tests/pki.py), ``etcd/`` (data), ``audit-policy.yaml``, ``audit.log``,
``admin.kubeconfig``, ``operator.kubeconfig`` and each process's output in ``<binary>.log``.

After the processes are up, the cluster is set up as ``helm install`` would leave it, less the
operator's Deployment (tests run the operator themselves): the namespace, the LearnerPlatform CRD,
a stand-in ServiceMonitor CRD (the kind the Prometheus Operator serves; the emulator serves it too),
and the chart's own ServiceAccount and RBAC, rendered by the real ``helm template``. The operator
then connects with ``operator.kubeconfig``: the CA and a token from the TokenRequest API for that
ServiceAccount, so every request it makes is authorized by the chart's rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import kmock
import yaml

from tests.kube_rest import Rest
from tests.net import free_port
from tests.pki import Pki, write_kubeconfig, write_pki

ROOT = Path(__file__).resolve().parent.parent
ASSETS = "KUBEBUILDER_ASSETS"
RELEASE = "ai-platform"  # the Helm release whose RBAC the operator runs under
OPERATOR_SERVICE_ACCOUNT = f"{RELEASE}-operator"  # the chart's "ai-platform.fullname"
SETUP_MANAGER = "envtest-setup"

SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor",
                       "listKind": "ServiceMonitorList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object",
                 "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


@dataclasses.dataclass(frozen=True)
class Binaries:
    folder: Path

    @property
    def etcd(self) -> Path:
        return self.folder / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.folder / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path | None:
        found = self.folder / "kube-controller-manager"
        return found if os.access(found, os.X_OK) else None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Binaries | None:
        """None without ``KUBEBUILDER_ASSETS``; a ValueError naming what is missing if it is set but incomplete."""
        folder = environ.get(ASSETS)
        if not folder:
            return None
        found = cls(Path(folder))
        missing = [str(p) for p in (found.etcd, found.kube_apiserver) if not os.access(p, os.X_OK)]
        if missing:
            raise ValueError(f"{ASSETS}={folder}: no executable {', '.join(missing)} "
                             "(get them with `setup-envtest use -p path 1.36.x`)")
        return found


class Process:
    """A child process whose output goes to ``<folder>/<name>.log``, quoted when it fails to start."""

    def __init__(self, name: str, command: list[str], folder: Path) -> None:
        self.name, self.command, self.log = name, command, folder / f"{name}.log"
        with self.log.open("ab") as output:
            self._popen = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def check(self) -> None:
        if self._popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self._popen.returncode}; {self.log} ends with:\n{tail}")

    def stop(self, how: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(how)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()


def wait_until(ready: Any, what: str, process: Process, timeout: float = 60.0) -> None:
    """Poll ``ready()`` (connection errors count as not yet) until true; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        process.check()
        with contextlib.suppress(httpx.HTTPError, kmock.KubernetesError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s (see {process.log})")
        time.sleep(0.2)


def audit_policy(user: str, level: str) -> dict[str, Any]:
    """Only ``user``'s requests (the operator's), one event per request stage after it was received."""
    return {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": level, "users": [user]}, {"level": "None"}]}


def helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("helm not found: run scripts/test, which fetches helm v4 into .tools/bin")


def chart_rbac(namespace: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC for a release in ``namespace``, as `helm install` would create them."""
    rendered = subprocess.run(
        [helm_binary(), "template", RELEASE, str(ROOT / "helm" / "ai-platform"), "--namespace", namespace,
         "--set", "image.tag=envtest", "--show-only", "templates/operator-serviceaccount.yaml",
         "--show-only", "templates/operator-rbac.yaml"], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


class ControlPlane:
    def __init__(self, binaries: Binaries, folder: Path, crd: dict[str, Any], *, namespace: str,
                 audit_level: str = "Request") -> None:
        self.binaries, self.folder, self.crd, self.namespace = binaries, folder, crd, namespace
        self.audit_level = audit_level
        self.pki = Pki(folder / "pki")
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        self.controller_manager_port = free_port()
        self.audit_log = folder / "audit.log"
        self.admin_kubeconfig = folder / "admin.kubeconfig"
        self.operator_kubeconfig = folder / "operator.kubeconfig"
        self.operator_user = f"system:serviceaccount:{namespace}:{OPERATOR_SERVICE_ACCOUNT}"
        self.operator_token = ""
        self.processes: dict[str, Process] = {}
        self._rest: Rest | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def has_controllers(self) -> bool:
        return self.binaries.kube_controller_manager is not None

    @property
    def rest(self) -> Rest:
        """Cluster-admin (a client certificate in the group system:masters)."""
        assert self._rest is not None, "start() first"
        return self._rest

    # -- the command lines, in one place -----------------------------------------------------------

    def etcd_command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.etcd_port}"
        return [str(self.binaries.etcd), f"--data-dir={self.folder / 'etcd'}", f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}", f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
                "--unsafe-no-fsync=true"]  # throwaway data: no fsync, as envtest runs it

    def apiserver_command(self) -> list[str]:
        pki = self.pki
        return [str(self.binaries.kube_apiserver), f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}", f"--client-ca-file={pki.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC",
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={self.folder / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking", "--audit-log-maxsize=1024"]

    def controller_manager_command(self) -> list[str]:
        assert self.binaries.kube_controller_manager is not None
        admin = self.admin_kubeconfig
        return [str(self.binaries.kube_controller_manager), f"--kubeconfig={admin}",
                f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
                f"--service-account-private-key-file={self.pki.service_account_key}",
                f"--root-ca-file={self.pki.ca_cert}", "--leader-elect=false", "--use-service-account-credentials",
                "--bind-address=127.0.0.1", f"--secure-port={self.controller_manager_port}"]

    # -- lifecycle ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Every file the command lines name: certificates, keys, the audit policy, the admin kubeconfig."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_pki(self.pki.folder)
        (self.folder / "audit-policy.yaml").write_text(yaml.safe_dump(audit_policy(self.operator_user,
                                                                                   self.audit_level)))
        write_kubeconfig(self.admin_kubeconfig, self.url, self.pki.ca_cert, cert_file=self.pki.admin_cert,
                         key_file=self.pki.admin_key)

    def start(self) -> None:
        self.prepare()
        try:
            etcd = self.processes["etcd"] = Process("etcd", self.etcd_command(), self.folder)
            health = f"http://127.0.0.1:{self.etcd_port}/health"
            wait_until(lambda: httpx.get(health, trust_env=False).json().get("health") == "true", "etcd /health", etcd)
            self._rest = Rest(self.url, self.pki.ca_cert, self.pki.admin_cert, self.pki.admin_key)
            self.start_apiserver()
            self._set_up()
            if self.binaries.kube_controller_manager is not None:
                manager = self.processes["kube-controller-manager"] = Process(
                    "kube-controller-manager", self.controller_manager_command(), self.folder)
                # The ServiceAccount controller makes `default` in every namespace: the controllers run.
                wait_until(lambda: self.rest.get(f"/api/v1/namespaces/{self.namespace}/serviceaccounts/default"),
                           "kube-controller-manager's controllers", manager)
        except BaseException:
            self.stop()
            raise

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again: on the same port and etcd) and wait until it is ready."""
        apiserver = self.processes["kube-apiserver"] = Process("kube-apiserver", self.apiserver_command(),
                                                               self.folder)
        wait_until(lambda: self.rest.healthy("/readyz"), "kube-apiserver /readyz", apiserver)

    def stop_apiserver(self, how: signal.Signals) -> None:
        """Stop kube-apiserver with ``how`` (SIGKILL: a crash); every request fails until ``start_apiserver``."""
        self.processes["kube-apiserver"].stop(how)
        self.rest.reconnect()

    def restart_apiserver(self, how: signal.Signals) -> None:
        """Stop kube-apiserver with ``how`` and start it again at once."""
        self.stop_apiserver(how)
        self.start_apiserver()

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            if name in self.processes:
                self.processes[name].stop()
        if self._rest is not None:
            self._rest.close()

    # -- what `helm install` would have created ----------------------------------------------------

    def _set_up(self) -> None:
        rest = self.rest
        rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}, SETUP_MANAGER)
        for crd in (self.crd, SERVICE_MONITOR_CRD):
            rest.apply(crd, SETUP_MANAGER)
        for crd in (self.crd, SERVICE_MONITOR_CRD):
            where = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
            wait_until(lambda where=where: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in ((rest.get(where) or {}).get("status") or {}).get("conditions") or []),
                f"CRD {crd['metadata']['name']} established", self.processes["kube-apiserver"])
        for doc in chart_rbac(self.namespace):
            rest.apply(doc, SETUP_MANAGER)
        answer = rest.call(
            "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{OPERATOR_SERVICE_ACCOUNT}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 86400}})
        self.operator_token = str(answer["status"]["token"])
        write_kubeconfig(self.operator_kubeconfig, self.url, self.pki.ca_cert, token=self.operator_token)
        # The RBAC authorizer learns new bindings from a watch: wait until the operator may list its kind.
        with httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.pki.ca_cert)),
                          headers={"Authorization": f"Bearer {self.operator_token}"}, trust_env=False) as client:
            wait_until(lambda: client.get("/apis/learner.dev/v1alpha1/learnerplatforms").is_success,
                       "the chart's RBAC in effect", self.processes["kube-apiserver"])
