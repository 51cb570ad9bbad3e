"""The `cluster` fixture on a real API server: the emulator's test-facing methods, over HTTPS as cluster-admin.

Tests drive the cluster as a user or a controller would (``put``, ``edit``, ``remove``, ``scale``,
``set_deployment_status``) and read it back (``get``, ``all``); ``log`` and ``mutating_requests`` are
the operator's requests, from the API server's audit log (tests/audit_log.py). Refusals raise
``kmock.KubernetesError`` with the server's status, reason and message, as the emulator's do.

Where this backend differs from the emulator, and why:

- One namespace for every test (the one the harness calls NS), emptied before each test of what the
  tests and the operator made (:func:`made_here`), and of nothing else: it also holds the chart's
  ServiceAccount and RBAC that the operator runs under (as after ``helm install -n learning``), and what
  the control plane puts into every namespace (kube-root-ca.crt, the ``default`` ServiceAccount; some
  distributions add more and recreate it at once). Tests import NS as a constant. Cluster-scoped objects
  a test makes are not removed.
- ``put`` labels what it creates ``learner.dev/made-by-tests`` (the reset's mark).
- ``put`` creates, or replaces the whole object (PUT with the stored resourceVersion), with strict
  field validation as kubectl's; on the emulator it replaces the stored object.
- Controllers: without kube-controller-manager nothing plays one (tests marked ``needs_controller``
  skip) and ``set_deployment_status`` writes the status as the emulator does. With it, the real
  Deployment controller owns that status, so ``set_deployment_status`` plays the kubelet instead: it
  marks the current ReplicaSet's pods Ready (no node, no scheduler: the pods stay unbound).
  Likewise ``start_job``/``finish_job``: without it they write the Job's status (and its pods) as the
  emulator's do; with it the real Job controller creates the pods, the test ends each one as a kubelet
  would (terminated, with a termination message) until the controller marks the Job Complete or Failed.
- ``run_autoscalers`` plays the HPA controller's first sync ahead of the real one, which makes it one
  sync period (15 s) after the HPA exists, so that it does not land inside what a test measures.
- ``hang_up`` and ``watch_gap`` restart kube-apiserver: seconds, not milliseconds (their docstrings).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import yarl

from learner_operator.drift import HANDOVER_MANAGER
from learner_operator.models import FIELD_MANAGER
from tests.audit_log import MUTATING, AuditLog
from tests.control_plane import ControlPlane
from tests.controllers import autoscaler_first_sync, deployment_status
from tests.kube_rest import MERGE, Rest, path

USER_MANAGER = "test-user"  # the field manager of every change a test makes
STRATEGIC = "application/strategic-merge-patch+json"

# Emptied before each test, owners first so that no controller re-creates what was already swept.
_EMPTIED = [
    ("learner.dev/v1alpha1", "learnerplatforms"), ("apps/v1", "deployments"), ("apps/v1", "replicasets"),
    ("batch/v1", "jobs"), ("v1", "pods"), ("autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "networkpolicies"), ("monitoring.coreos.com/v1", "servicemonitors"),
    ("v1", "services"), ("v1", "configmaps"), ("v1", "secrets"), ("v1", "serviceaccounts"), ("v1", "events"),
    ("coordination.k8s.io/v1", "leases"),
]
#: The mark ``put`` leaves on what a test creates.
MADE_BY_TESTS = "learner.dev/made-by-tests"
#: The field managers of the tests and the operator (the operator's Leases carry no label).
_OUR_MANAGERS = {USER_MANAGER, FIELD_MANAGER, HANDOVER_MANAGER}
#: Owners whose dependents (ReplicaSets, pods, KEDA's HPA) are the tests' too: no namespace holds them on its own.
_OUR_OWNERS = {"LearnerPlatform", "Deployment", "ReplicaSet", "Job", "ScaledObject"}
#: Kinds whose events are the tests' (the controllers' events about their objects included).
_OUR_KINDS = {*_OUR_OWNERS, "Pod", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "NetworkPolicy",
              "Lease"}


def made_here(obj: dict[str, Any]) -> bool:
    """Made by a test or the operator, or by a controller for one of theirs: what a reset deletes. Anything
    else in the namespace (the chart's ServiceAccount, kube-root-ca.crt, `default`, a distribution's own)
    is the cluster's, and stays."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if MADE_BY_TESTS in labels or labels.get("app.kubernetes.io/managed-by") == FIELD_MANAGER:
        return True
    if any(entry.get("manager") in _OUR_MANAGERS for entry in meta.get("managedFields") or []):
        return True
    if any(ref.get("kind") in _OUR_OWNERS for ref in meta.get("ownerReferences") or []):
        return True
    return obj.get("kind") == "Event" and (obj.get("involvedObject") or {}).get("kind") in _OUR_KINDS


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


class RealCluster:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._audit = AuditLog(plane.audit_log, plane.operator_user)

    @property
    def _rest(self) -> Rest:
        """Read from the plane at each call, so a facade can be made before its plane has started."""
        return self.plane.rest

    @property
    def url(self) -> yarl.URL:
        return yarl.URL(self.plane.url)

    @property
    def operator_kubeconfig(self) -> Path:
        """The CA and a token of the chart's ServiceAccount: what the operator connects with."""
        return self.plane.operator_kubeconfig

    @property
    def has_controllers(self) -> bool:
        return self.plane.has_controllers

    def _path(self, api_version: str, plural: str, namespace: str | None, name: str | None = None,
              subresource: str | None = None) -> str:
        _, namespaced = self._rest.resource(api_version, plural=plural)
        return path(api_version, plural, namespace if namespaced else None, name, subresource)

    def reset(self, timeout: float = 30.0) -> None:
        """Empty the test namespace of what tests and the operator made; the log starts after this."""
        deadline = time.monotonic() + timeout
        while True:
            left = []
            for api_version, plural in _EMPTIED:
                try:
                    found = self.all(api_version, plural, self.plane.namespace)
                except kmock.KubernetesError as exc:
                    if exc.status == 404:
                        continue  # not served (a CRD a test removed)
                    raise
                for obj in found:
                    meta = obj["metadata"]
                    if not made_here(obj):
                        continue
                    left.append(f"{plural}/{meta['name']}")
                    where = self._path(api_version, plural, meta.get("namespace"), meta["name"])
                    with contextlib.suppress(kmock.KubernetesError):  # gone meanwhile (404), or going
                        if meta.get("finalizers"):
                            self._rest.call("PATCH", where, {"metadata": {"finalizers": None}}, content_type=MERGE)
                        self._rest.call("DELETE", where, {"apiVersion": "v1", "kind": "DeleteOptions",
                                                          "gracePeriodSeconds": 0, "propagationPolicy": "Background"})
            if not left:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace {self.plane.namespace} not emptied in {timeout:.0f} s: {left}")
            time.sleep(0.1)
        self._audit = AuditLog(self.plane.audit_log, self.plane.operator_user)

    # -- the emulator's test-facing methods ------------------------------------------------------

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._rest.get(self._path(api_version, plural, namespace, name))

    def all(self, api_version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        listing = self._rest.call("GET", self._path(api_version, plural, namespace))
        kind = str(listing.get("kind", "")).removesuffix("List")
        return [{"apiVersion": api_version, "kind": kind, **item} for item in listing.get("items") or []]

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace as a whole; refusals (422 at admission) raise ``kmock.KubernetesError``."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), MADE_BY_TESTS: "true"}
        where = self._rest.object_path(obj)
        params = {"fieldManager": USER_MANAGER, "fieldValidation": "Strict"}
        try:
            return self._rest.call("POST", where.rsplit("/", 1)[0], obj, params=params)
        except kmock.KubernetesError as exc:
            if exc.status != 409 or exc.reason != "AlreadyExists":
                raise
        for _ in range(10):  # replaced with the resourceVersion read: someone may write in between
            body = copy.deepcopy(obj)
            body["metadata"]["resourceVersion"] = self._rest.call("GET", where)["metadata"]["resourceVersion"]
            try:
                return self._rest.call("PUT", where, body, params=params)
            except kmock.KubernetesError as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError(f"{where}: kept conflicting with other writers")

    def edit(self, api_version: str, plural: str, namespace: str, name: str, patch: dict[str, Any],
             *, status: bool = False, manager: str | None = None, subresource: str | None = None) -> dict[str, Any]:
        """What `kubectl patch --type merge` (or, with ``status``, a controller writing status) does;
        ``subresource="scale"`` is `kubectl scale`."""
        where = self._path(api_version, plural, namespace, name, "status" if status else subresource)
        answer = self._rest.call("PATCH", where, patch, content_type=MERGE,
                                 params={"fieldManager": manager or USER_MANAGER})
        return self._rest.call("GET", self._path(api_version, plural, namespace, name)) if subresource else answer

    def update(self, api_version: str, plural: str, namespace: str, name: str,
               mutate: Callable[[dict[str, Any]], None], *, manager: str = "kubectl-edit") -> dict[str, Any]:
        """Read, change, write back (PUT): what `kubectl edit` or `kubectl set env/image` does."""
        where = self._path(api_version, plural, namespace, name)
        for _ in range(10):
            body = self._rest.call("GET", where)
            mutate(body)
            try:
                return self._rest.call("PUT", where, body, params={"fieldManager": manager})
            except kmock.KubernetesError as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError(f"{where}: kept conflicting with other writers")

    def remove(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        """`kubectl delete`: dependents follow through the garbage collector (kube-controller-manager only)."""
        self._rest.call("DELETE", self._path(api_version, plural, namespace, name),
                        {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """What the HorizontalPodAutoscaler does: write the Deployment's scale subresource."""
        self._rest.call("PATCH", self._path("apps/v1", "deployments", namespace, name, "scale"),
                        {"spec": {"replicas": replicas}}, content_type=MERGE,
                        params={"fieldManager": "horizontal-pod-autoscaler"})
        return self._rest.call("GET", self._path("apps/v1", "deployments", namespace, name))

    def run_autoscalers(self, namespace: str) -> None:
        """The HPA controller's first sync, played ahead of the real one (15 s after an HPA is made): each
        target's replicas moved into [minReplicas, maxReplicas] through the scale subresource, as it does.
        Its own sync then finds nothing to move and writes only the HPA's status."""
        for hpa in self.all("autoscaling/v2", "horizontalpodautoscalers", namespace):
            target = self.get("apps/v1", "deployments", namespace, hpa["spec"]["scaleTargetRef"]["name"])
            if target is not None and (desired := autoscaler_first_sync(
                    hpa, int(target["spec"].get("replicas", 1)))) is not None:
                self.scale(namespace, target["metadata"]["name"], desired)

    def set_deployment_status(self, namespace: str, name: str, *, ready: int | None = None) -> dict[str, Any]:
        """All replicas of the current template ready (or ``ready`` of them), as the emulator's."""
        if self.has_controllers:
            return self._play_kubelet(namespace, name, ready)
        deployment = self._rest.call("GET", self._path("apps/v1", "deployments", namespace, name))
        return self.edit("apps/v1", "deployments", namespace, name,
                         {"status": deployment_status(deployment, ready)}, status=True)

    def _play_kubelet(self, namespace: str, name: str, ready: int | None, timeout: float = 30.0) -> dict[str, Any]:
        """Mark the current ReplicaSet's pods Ready until the Deployment controller reports the rollout done."""
        deadline = time.monotonic() + timeout
        while True:
            deployment = self._rest.call("GET", self._path("apps/v1", "deployments", namespace, name))
            replicas = int(deployment["spec"].get("replicas", 1))
            want = replicas if ready is None else ready
            pods = self._current_pods(deployment)
            for index, pod in enumerate(pods):
                self._set_pod_ready(pod, index < want)
            status = deployment.get("status") or {}
            if len(pods) == replicas and status.get("observedGeneration") == deployment["metadata"]["generation"] \
                    and all(status.get(field, 0) == replicas for field in ("replicas", "updatedReplicas")) \
                    and all(status.get(field, 0) == want for field in ("readyReplicas", "availableReplicas")):
                return deployment
            if time.monotonic() > deadline:
                raise AssertionError(f"Deployment {name}: not {want}/{replicas} ready within {timeout:.0f} s: {status}")
            time.sleep(0.1)

    def _current_pods(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        meta = deployment["metadata"]
        revision = (meta.get("annotations") or {}).get("deployment.kubernetes.io/revision")
        current = [rs for rs in self.all("apps/v1", "replicasets", meta["namespace"]) if _owned_by(rs, meta["uid"])
                   and (rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision") == revision]
        if not current:
            return []
        pods = [pod for pod in self.all("v1", "pods", meta["namespace"])
                if _owned_by(pod, current[0]["metadata"]["uid"]) and not pod["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=lambda pod: str(pod["metadata"]["name"]))

    def _set_pod_ready(self, pod: dict[str, Any], ready: bool) -> None:
        wanted = "True" if ready else "False"
        conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
        if conditions.get("Ready") == wanted:
            return
        now = _now()
        self._rest.call("PATCH", self._path("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"],
                                            "status"),
                        {"status": {"conditions": [  # merged by type: a strategic merge patch, as kubelets send
                            {"type": "ContainersReady", "status": wanted, "lastTransitionTime": now},
                            {"type": "Ready", "status": wanted, "lastTransitionTime": now}]}},
                        content_type=STRATEGIC, params={"fieldManager": "kubelet"})

    def start_job(self, namespace: str, name: str) -> dict[str, Any]:
        """The Job runs: its pod exists (the Job controller's), or its status says so (as the emulator's)."""
        job = self._rest.call("GET", self._path("batch/v1", "jobs", namespace, name))
        if self.has_controllers:
            self._wait_for(lambda: self._job_pods(job, running=True), f"a pod of Job {name}")
            return job
        return self.edit("batch/v1", "jobs", namespace, name, {"status": {
            "startTime": _now(), "active": 1, "ready": 0, "terminating": 0}}, status=True, manager="job-controller")

    def finish_job(self, namespace: str, name: str, *, succeeded: bool, message: str, attempts: int = 1,
                   reason: str = "BackoffLimitExceeded") -> dict[str, Any]:
        """The Job ends, its pods having terminated with ``message`` (see the emulator's). With the real Job
        controller, every pod it starts is ended as a kubelet would (exit 0 when ``succeeded``, else 2, so it
        retries up to its backoffLimit, with its own delays) until the Job is Complete or Failed; ``attempts``
        and ``reason`` are then the controller's business."""
        where = self._path("batch/v1", "jobs", namespace, name)
        job = self._rest.call("GET", where)
        if not self.has_controllers:
            return self._write_job_outcome(job, succeeded=succeeded, message=message, attempts=attempts,
                                           reason=reason)

        def ended() -> dict[str, Any] | None:
            current = self._rest.call("GET", where)
            conditions = (current.get("status") or {}).get("conditions") or []
            if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions):
                return current
            for pod in self._job_pods(current, running=True):
                self._terminate(pod, exit_code=0 if succeeded else 2, message=message)
            return None

        return self._wait_for(ended, f"Job {name} to end", timeout=120.0)

    def _wait_for(self, check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := check()):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:.0f} s: {what}")
            time.sleep(0.2)
        return result

    def _job_pods(self, job: dict[str, Any], *, running: bool) -> list[dict[str, Any]]:
        pods = [pod for pod in self.all("v1", "pods", job["metadata"]["namespace"])
                if _owned_by(pod, job["metadata"]["uid"]) and not pod["metadata"].get("deletionTimestamp")]
        return [pod for pod in pods if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")] \
            if running else pods

    def _terminate(self, pod: dict[str, Any], *, exit_code: int, message: str) -> None:
        """What the kubelet reports when the pod's only container (restartPolicy Never) has exited."""
        now = _now()
        [container] = pod["spec"]["containers"]
        meta = pod["metadata"]
        self._rest.call("PATCH", self._path("v1", "pods", meta["namespace"], meta["name"], "status"), {"status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed", "startTime": now,
            "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                   "ready": False, "restartCount": 0, "started": False, "state": {"terminated": {
                                       "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                       "message": message, "startedAt": now, "finishedAt": now}}}]}},
            content_type=MERGE, params={"fieldManager": "kubelet"})

    def _write_job_outcome(self, job: dict[str, Any], *, succeeded: bool, message: str, attempts: int,
                           reason: str) -> dict[str, Any]:
        """Without a Job controller: its pods and its status, written as the emulator's finish_job does."""
        meta, template = job["metadata"], job["spec"]["template"]
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        for attempt in range(attempts):
            pod = self.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"{meta['name']}-{attempt}", "namespace": meta["namespace"],
                "labels": (template.get("metadata") or {}).get("labels") or {}, "ownerReferences": [owner]},
                "spec": copy.deepcopy(template["spec"])})
            self._terminate(pod, exit_code=0 if succeeded and attempt == attempts - 1 else 2, message=message)
        now = _now()
        started = (job.get("status") or {}).get("startTime") or now
        if succeeded:
            text = "Reached expected number of succeeded pods"
            conditions = [{"type": "SuccessCriteriaMet", "reason": "CompletionsReached", "message": text},
                          {"type": "Complete", "reason": "CompletionsReached", "message": text}]
            counts: dict[str, Any] = {"succeeded": 1, "failed": attempts - 1, "completionTime": now}
        else:
            text = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
                    "DeadlineExceeded": "Job was active longer than specified deadline"}.get(reason, reason)
            conditions = [{"type": "FailureTarget", "reason": reason, "message": text},
                          {"type": "Failed", "reason": reason, "message": text}]
            counts = {"failed": attempts}
        return self.edit("batch/v1", "jobs", meta["namespace"], meta["name"], {"status": {
            "startTime": started, "active": 0, "ready": 0, "terminating": 0, **counts,
            "conditions": [{**c, "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
                           for c in conditions]}}, status=True, manager="job-controller")

    @property
    def log(self) -> list[kmock.Request]:
        """The operator's requests since the test began (its ServiceAccount's, from the audit log)."""
        return self._audit.requests

    def mutating_requests(self, since: int = 0) -> list[kmock.Request]:
        return [r for r in self.log[since:] if r.method.value in MUTATING]

    def hang_up(self) -> None:
        """End every open watch: kube-apiserver is stopped (SIGTERM) and started again, which takes
        seconds, during which every other request fails too (the emulator's ends only the watches)."""
        self.plane.restart_apiserver(signal.SIGTERM)

    @contextlib.asynccontextmanager
    async def watch_gap(self, *, down: bool = False) -> AsyncIterator[None]:
        """The API server crashes (kill -9) and is started again before the block runs (``down`` is how
        a real restart always is: every request fails until it is back).

        Unlike the emulator's gap, nothing here keeps watches closed while the block runs: the block's
        changes land while kopf reconnects (and meets "429 storage is (re)initializing" or "410 Gone"
        from the fresh watch cache), so a deletion in the block is missed by the watches only when
        it is made before they are back, as after a real outage. On the emulator it always is.
        """
        await asyncio.to_thread(self.plane.restart_apiserver, signal.SIGKILL)
        yield

    def dry_run_create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """What the server would store for ``obj`` as a new object (admission, defaults, pruning), without
        storing it: kubectl's ``--dry-run=server`` with its default strict field validation."""
        where = self._rest.object_path(obj)
        return self._rest.call("POST", where.rsplit("/", 1)[0], obj,
                               params={"dryRun": "All", "fieldValidation": "Strict", "fieldManager": USER_MANAGER})

    def create_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        """Whether the server accepts ``crd`` as a new CRD, validated as at creation (every default against
        the schema and its CEL rules): a dry-run create. The setup created it already, so "AlreadyExists"
        (checked after validation) means accepted; a refusal raises ``kmock.KubernetesError`` (422)."""
        try:
            return self._rest.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd,
                                   params={"dryRun": "All", "fieldValidation": "Strict"})
        except kmock.KubernetesError as exc:
            if exc.status == 409 and exc.reason == "AlreadyExists":
                return crd
            raise
