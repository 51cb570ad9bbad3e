"""The parts of the real-control-plane backend that run without envtest's binaries.

Certificates and kubeconfigs (against a TLS server of our own, with the clients the tests and the
operator use), the command lines and the files they name, the chart's RBAC, and reading the
operator's requests from an audit log written in the documented ``audit.k8s.io/v1`` Event format.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import kubernetes
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from learner_operator.kube import ResourceRef
from learner_operator.kube.client import connect
from tests.audit_log import AuditLog
from tests.conftest import EXAMPLES, load
from tests.control_plane import OPERATOR_SERVICE_ACCOUNT, Binaries, ControlPlane, audit_policy, chart_rbac
from tests.kube_emulator import Cluster as Emulator
from tests.kube_rest import Rest
from tests.net import free_port
from tests.operator_harness import NS, connection
from tests.pki import ADMIN_USER, Pki, write_kubeconfig, write_pki
from tests.real_cluster import RealCluster
from tests.test_operator import secret

OPERATOR = f"system:serviceaccount:{NS}:{OPERATOR_SERVICE_ACCOUNT}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


def test_certificates_chain_to_the_ca_and_the_admin_is_in_system_masters(pki: Pki) -> None:
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca_cert), str(pki.serving_cert),
                               str(pki.admin_cert)], capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stderr
    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes()).subject
    assert admin.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ADMIN_USER
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    assert oct(pki.admin_key.stat().st_mode & 0o777) == "0o600"


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[str]:
    """An HTTPS server with the API server's TLS setup: serving cert, client certs from the CA (optional)."""
    async def whoami(request: aiohttp.web.Request) -> aiohttp.web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(pair[0] for pair in (peer or {}).get("subject", ()))
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
                                          "data": {"certificate": subject.get("commonName", ""),
                                                   "authorization": request.headers.get("Authorization", "")}})

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    context.verify_mode = ssl.CERT_OPTIONAL
    app = aiohttp.web.Application()
    app.router.add_get("/{tail:.*}", whoami)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_admin_client_certificate_is_presented(pki: Pki, tls_server: str) -> None:
    rest = Rest(tls_server, pki.ca_cert, pki.admin_cert, pki.admin_key)
    try:
        answer = await asyncio.to_thread(rest.call, "GET", "/api/v1/namespaces/learning/configmaps/x")
    finally:
        rest.close()
    assert answer["data"]["certificate"] == ADMIN_USER


async def test_the_operators_kubeconfig_carries_the_ca_and_token(pki: Pki, tls_server: str, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "operator.kubeconfig", tls_server, pki.ca_cert, token="sa-token")
    # The reconciler's client (kubernetes.aio), as the harness and `learner-operator run` configure it.
    api = await connect(kubeconfig=str(kubeconfig))
    try:
        seen = await api.get(ResourceRef("v1", "configmaps", "learning", "x"))
    finally:
        await api.close()
    assert seen is not None
    assert seen["data"] == {"certificate": "", "authorization": "Bearer sa-token"}
    assert api.kubeconfig == str(kubeconfig)  # a second client (leader election) reaches the same server
    # kopf's login in `learner-operator run` (login_via_client) reads it with the synchronous client.
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    assert configuration.host == tls_server
    assert configuration.ssl_ca_cert == str(pki.ca_cert)
    assert configuration.get_api_key_with_prefix("BearerToken") == "Bearer sa-token"  # what kopf reads


async def test_kopf_logs_in_with_the_harness_connection(pki: Pki, tls_server: str, tmp_path: Path) -> None:
    """The ConnectionInfo the harness gives kopf for a real API server: its CA verifies, its token is sent."""
    kubeconfig = write_kubeconfig(tmp_path / "operator.kubeconfig", tls_server, pki.ca_cert, token="sa-token")
    plane = types.SimpleNamespace(url=tls_server, pki=pki, operator_token="sa-token", operator_kubeconfig=kubeconfig,
                                  rest=None, audit_log=tmp_path / "audit.log", operator_user=OPERATOR)
    info, operator_config = connection(RealCluster(plane))  # type: ignore[arg-type]
    assert operator_config == {"kubeconfig": str(kubeconfig)}
    async with aiohttp.ClientSession(headers=info.as_http_headers()) as session, \
            session.get(f"{info.server}/api/v1/namespaces/learning/configmaps/x", ssl=info.as_ssl_context()) as answer:
        seen = await answer.json()
    assert seen["data"] == {"certificate": "", "authorization": "Bearer sa-token"}


def test_the_environment_selects_the_backend(tmp_path: Path) -> None:
    assert Binaries.from_environment({}) is None
    with pytest.raises(ValueError, match=r"no executable .*etcd, .*kube-apiserver.*setup-envtest use"):
        Binaries.from_environment({"KUBEBUILDER_ASSETS": str(tmp_path)})
    for name in ("etcd", "kube-apiserver", "kubectl"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    found = Binaries.from_environment({"KUBEBUILDER_ASSETS": str(tmp_path)})
    assert found is not None
    assert found.kube_controller_manager is None  # envtest ships none: then tests that need it skip
    (tmp_path / "kube-controller-manager").write_text("#!/bin/sh\n")
    (tmp_path / "kube-controller-manager").chmod(0o755)
    assert found.kube_controller_manager == tmp_path / "kube-controller-manager"


def flags(command: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").partition("=")[::2] for arg in command[1:])


def test_every_file_the_command_lines_name_is_there(tmp_path: Path, crd: dict[str, Any]) -> None:
    binaries = tmp_path / "bin"
    binaries.mkdir()
    (binaries / "kube-controller-manager").write_text("#!/bin/sh\n")
    (binaries / "kube-controller-manager").chmod(0o755)
    plane = ControlPlane(Binaries(binaries), tmp_path / "work", crd, namespace=NS)
    plane.prepare()
    apiserver, manager, etcd = (flags(plane.apiserver_command()), flags(plane.controller_manager_command()),
                                flags(plane.etcd_command()))
    written_later = {"audit-log-path", "data-dir"}
    for name, value in [*apiserver.items(), *manager.items(), *etcd.items()]:
        if value.startswith("/") and name not in written_later:
            assert Path(value).is_file(), f"--{name}={value}"
    assert {"etcd-servers", "bind-address", "advertise-address", "secure-port", "client-ca-file",
            "service-account-issuer", "service-account-key-file", "service-account-signing-key-file",
            "service-cluster-ip-range", "authorization-mode", "endpoint-reconciler-type", "audit-policy-file",
            "audit-log-path"} <= set(apiserver)
    assert apiserver["etcd-servers"] == etcd["listen-client-urls"] == etcd["advertise-client-urls"]
    assert apiserver["authorization-mode"] == "RBAC"
    assert {"kubeconfig", "service-account-private-key-file", "root-ca-file", "leader-elect",
            "use-service-account-credentials"} <= set(manager)
    admin = yaml.safe_load(plane.admin_kubeconfig.read_text())
    assert admin["clusters"][0]["cluster"]["server"] == plane.url
    assert Path(admin["users"][0]["user"]["client-certificate"]) == plane.pki.admin_cert
    policy = yaml.safe_load(Path(apiserver["audit-policy-file"]).read_text())
    assert policy == audit_policy(OPERATOR, "Request")


def test_the_operator_runs_under_the_charts_service_account_and_rbac() -> None:
    docs = chart_rbac(NS)
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert (account["metadata"]["name"], account["metadata"]["namespace"]) == (OPERATOR_SERVICE_ACCOUNT, NS)
    subjects = {(s["name"], s["namespace"]) for d in docs if d["kind"].endswith("Binding") for s in d["subjects"]}
    assert subjects == {(OPERATOR_SERVICE_ACCOUNT, NS)}
    leases = [d for d in docs if d["kind"] == "Role" and any("leases" in r["resources"] for r in d["rules"])]
    assert [d["metadata"]["namespace"] for d in leases] == [NS]  # the tests' Leases live in NS


def event(audit_id: str, verb: str, uri: str, *, user: str = OPERATOR, stage: str = "ResponseComplete",
          ref: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """An audit.k8s.io/v1 Event as kube-apiserver's log backend writes it (one per line, JSON)."""
    found: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request", "auditID": audit_id, "stage": stage,
        "requestURI": uri, "verb": verb,
        "user": {"username": user, "uid": "6f1c", "groups": ["system:serviceaccounts", "system:authenticated"]},
        "sourceIPs": ["127.0.0.1"], "userAgent": "kopf/1.45.2", "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-05-04T10:00:00.000000Z", "stageTimestamp": "2026-05-04T10:00:00.004000Z",
        "annotations": {"authorization.k8s.io/decision": "allow"},
    }
    if ref is not None:
        found["objectRef"] = ref
    if body is not None:
        found["requestObject"] = body
    return found


def write_events(path: Path, *events: dict[str, Any], tail: str = "") -> None:
    with path.open("a") as file:
        file.writelines(json.dumps(e) + "\n" for e in events)
        file.write(tail)


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": NS}}


def test_the_audit_log_reads_as_the_operators_requests(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_events(log, event("0", "create", "/api/v1/namespaces/learning/secrets", user="envtest-admin",
                            ref={"resource": "secrets", "namespace": NS, "apiVersion": "v1"}))
    reader = AuditLog(log, OPERATOR)  # from the end: what was there before the test does not count
    watch = event("1", "watch", "/apis/apps/v1/deployments?labelSelector=a%3Db&watch=true&timeoutSeconds=300",
                  stage="ResponseStarted", ref={"resource": "deployments", "apiGroup": "apps", "apiVersion": "v1"})
    apply = event("2", "patch", "/apis/apps/v1/namespaces/learning/deployments/api?fieldManager=learner-platform-"
                  "operator&force=true", ref={"resource": "deployments", "namespace": NS, "name": "api",
                                              "apiGroup": "apps", "apiVersion": "v1"}, body=DEPLOYMENT)
    status = event("3", "patch", "/apis/learner.dev/v1alpha1/namespaces/learning/learnerplatforms/p/status"
                   "?fieldManager=learner-platform-operator",
                   ref={"resource": "learnerplatforms", "namespace": NS, "name": "p", "apiGroup": "learner.dev",
                        "apiVersion": "v1alpha1", "subresource": "status"}, body={"status": {}})
    read = event("4", "get", "/api/v1/namespaces/learning/secrets/s",
                 ref={"resource": "secrets", "namespace": NS, "name": "s", "apiVersion": "v1"})
    discovery = event("5", "get", "/apis")
    someone_else = event("6", "delete", "/api/v1/namespaces/learning/services/api", user="envtest-admin",
                         ref={"resource": "services", "namespace": NS, "name": "api", "apiVersion": "v1"})
    being_written = json.dumps({**read, "auditID": "7"})
    write_events(log, watch, apply, status, read, discovery, someone_else, tail=being_written[:40])

    requests = reader.requests
    assert [(r.method.value, r.resource and r.resource.plural, r.name, r.subresource) for r in requests] == [
        ("GET", "deployments", None, None), ("PATCH", "deployments", "api", None),
        ("PATCH", "learnerplatforms", "p", "status"), ("GET", "secrets", "s", None), ("GET", None, None, None)]
    watched, applied, patched, got, _ = requests
    assert watched.params == {"labelSelector": "a=b", "watch": "true", "timeoutSeconds": "300"}
    assert watched.action == kmock.action.WATCH
    assert (watched.resource.group, watched.namespace) == ("apps", None)
    assert applied.headers["Content-Type"] == "application/apply-patch+yaml"
    assert applied.data == DEPLOYMENT
    assert patched.headers["Content-Type"] == "application/merge-patch+json"
    assert got.resource == kmock.resource("", "v1", "secrets")

    # The line being written counts once complete; the watch's later stage does not count again.
    with log.open("a") as file:
        file.write(being_written[40:] + "\n")
    write_events(log, {**watch, "stage": "ResponseComplete"})
    assert [(r.id, r.resource and r.resource.plural) for r in reader.requests[4:]] == [(4, None), (5, "secrets")]
    log.write_text("")  # rotated by the server: the live file is a new, shorter one
    write_events(log, {**read, "auditID": "8"})
    assert [(r.id, r.name) for r in reader.requests[5:]] == [(5, "s"), (6, "s")]


def test_the_facade_counts_only_the_operators_writes(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.touch()
    plane = types.SimpleNamespace(rest=None, audit_log=log, operator_user=OPERATOR)
    cluster = RealCluster(plane)  # type: ignore[arg-type]
    ref = {"resource": "services", "namespace": NS, "name": "api", "apiVersion": "v1"}
    write_events(log, event("1", "get", "/api/v1/namespaces/learning/services/api", ref=ref),
                 event("2", "patch", "/api/v1/namespaces/learning/services/api?fieldManager=m&force=true", ref=ref),
                 event("3", "delete", "/api/v1/namespaces/learning/services/api", ref=ref, user="envtest-admin"),
                 event("4", "create", "/api/v1/namespaces/learning/events", ref={**ref, "resource": "events"}),
                 event("5", "update", "/apis/coordination.k8s.io/v1/namespaces/learning/leases/l",
                       ref={"resource": "leases", "namespace": NS, "name": "l", "apiGroup": "coordination.k8s.io",
                            "apiVersion": "v1"}))
    assert [(r.method.value, r.resource.plural) for r in cluster.mutating_requests()] == [
        ("PATCH", "services"), ("POST", "events"), ("PUT", "leases")]
    assert [r.resource.plural for r in cluster.mutating_requests(2)] == ["events", "leases"]
    assert len(cluster.log) == 4


@pytest.mark.emulator_only("drives the emulator's HTTP API with the real backend's facade")
async def test_the_facade_drives_an_api_server_as_tests_drive_the_emulator(
    cluster: Emulator, pki: Pki, tmp_path: Path,
) -> None:
    """The facade's paths, discovery, create-or-replace, refusals and namespace reset, over HTTP."""
    rest = Rest(str(cluster.url).rstrip("/"), pki.ca_cert, pki.admin_cert, pki.admin_key)
    plane = types.SimpleNamespace(rest=rest, namespace=NS, audit_log=tmp_path / "audit.log", operator_user=OPERATOR,
                                  has_controllers=False, url=str(cluster.url))
    real = RealCluster(plane)  # type: ignore[arg-type]
    cluster["put"] << (lambda request: cluster.put(request.data))  # the emulator serves no PUT: replace in-process

    async def call(method: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, *args, **kwargs)  # blocking HTTP; the emulator is in this loop

    try:
        await call(real.put, secret())
        await call(real.put, secret(DATABASE_URL="postgresql://rotated"))
        stored = cluster.get("v1", "secrets", NS, "ai-platform-secrets") or {}
        assert stored["data"]["DATABASE_URL"] == base64.b64encode(b"postgresql://rotated").decode()
        assert [(o["apiVersion"], o["kind"]) for o in await call(real.all, "v1", "secrets", NS)] == [("v1", "Secret")]
        assert await call(real.get, "v1", "secrets", NS, "nope") is None

        with pytest.raises(kmock.KubernetesError) as refused:
            await call(real.put, load(EXAMPLES / "invalid" / "missing-tag.yaml"))
        assert (refused.value.status, refused.value.reason) == (422, "Invalid")
        assert "spec.image.tag: Required value" in str(refused.value.message)

        platform = await call(real.put, load(EXAMPLES / "01-minimal.yaml"))
        assert platform["spec"]["learnerApi"]["replicas"] == 2  # defaulted at admission
        edited = await call(real.edit, "learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                            {"spec": {"paused": True}})
        assert (edited["spec"]["paused"], edited["metadata"]["generation"]) == (True, 2)
        cluster.put({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": NS},
                     "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}})
        await call(real.set_deployment_status, NS, "d", ready=2)
        status = (cluster.get("apps/v1", "deployments", NS, "d") or {})["status"]
        assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == (3, 2, 1)
        await call(real.remove, "apps/v1", "deployments", NS, "d")
        assert cluster.get("apps/v1", "deployments", NS, "d") is None

        # The cluster's own (the chart's, kube-controller-manager's kube-root-ca.crt and `default`, a
        # distribution's CA bundle) stay; what the operator made goes, by its label or its field manager.
        cluster.put({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": "ai-platform-operator", "namespace": NS}}, manager="envtest-setup")
        cluster.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "openshift-service-ca.crt", "namespace": NS}}, manager="service-ca-controller")
        cluster.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": "ai-platform-learner-api", "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "learner-platform-operator"}}}, manager="kubectl")
        cluster.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ai-platform-config",
                     "namespace": NS}, "data": {"NODE_ENV": "production"}}, manager="learner-platform-operator")
        await call(real.reset)
        left = {(o["kind"], o["metadata"]["name"]) for av, plural in (("v1", "serviceaccounts"), ("v1", "configmaps"),
                ("v1", "secrets"), ("learner.dev/v1alpha1", "learnerplatforms")) for o in cluster.all(av, plural, NS)}
        assert left == {("ServiceAccount", "ai-platform-operator"), ("ServiceAccount", "default"),
                        ("ConfigMap", "kube-root-ca.crt"), ("ConfigMap", "openshift-service-ca.crt")}
    finally:
        rest.close()
