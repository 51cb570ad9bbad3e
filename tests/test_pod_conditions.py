"""Conditions from what the pods do: the reason a person has to act on, not just "0/2 ready".

No kubelet runs on either backend: the tests write pod status as a kubelet would. Where the
ReplicaSet controller runs (a real control plane with kube-controller-manager) the pods are its own;
elsewhere the test makes them from the Deployment's template, as it would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from learner_operator.status import pod_problem
from tests.conftest import EXAMPLES, load
from tests.operator_harness import NS, AnyCluster, Operator, eventually, running_operator, settled
from tests.test_operator import API, EVALUATOR, condition, conditions, secret

pytestmark = pytest.mark.operator


@pytest.fixture
async def operator(cluster: AnyCluster) -> AsyncIterator[Operator]:
    async with running_operator(cluster) as op:
        yield op


async def pods_of(cluster: AnyCluster, deployment: str, count: int) -> list[str]:
    template = cluster.get("apps/v1", "deployments", NS, deployment)["spec"]["template"]
    labels = template["metadata"]["labels"]
    if getattr(cluster, "has_controllers", False):
        def made() -> list[str]:
            pods = [p for p in cluster.all("v1", "pods", NS) if all(
                p["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())]
            return [p["metadata"]["name"] for p in pods][:count] if len(pods) >= count else []
        found: list[str] = await eventually(made, within=30, what=f"{count} pods of {deployment}")
        return found
    names = [f"{deployment}-{index}" for index in range(count)]
    for name in names:
        cluster.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
                     "spec": template["spec"]})
    return names


def kubelet(cluster: AnyCluster, pod: str, **status: Any) -> None:
    cluster.edit("v1", "pods", NS, pod, {"status": status}, status=True)


def crash_looping(container: str, message: str, reason: str = "Error") -> dict[str, Any]:
    return {"phase": "Running", "containerStatuses": [{
        "name": container, "ready": False, "restartCount": 4, "image": "ghcr.io/ai-platform/learner-api:x",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}},
        "lastState": {"terminated": {"exitCode": 2 if reason == "Error" else 137, "reason": reason,
                                     "message": message}},
    }]}


async def converged(cluster: AnyCluster, operator: Operator) -> None:
    cluster.put(secret())
    cluster.put(load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, API), what="learner-api Deployment")
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, EVALUATOR), what="evaluator Deployment")
    cluster.scale(NS, API, 2)
    await settled(cluster, operator)


async def test_crash_looping_pods_name_the_container_and_its_last_words(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await converged(cluster, operator)
    cluster.set_deployment_status(NS, API, ready=0)
    line = "learner-api: DATABASE_URL's role owns the tables: connect as a role that is only a member of learner_app"
    for pod in await pods_of(cluster, API, 2):
        kubelet(cluster, pod, **crash_looping("learner-api", line))
    # the kubelet writes one pod, then the other: the operator may say "1 pod" in between
    await eventually(lambda: condition(cluster, "LearnerApiAvailable") == ("False", "CrashLoopBackOff")
                     and "2 learner-api pods CrashLoopBackOff" in conditions(cluster)["LearnerApiAvailable"]["message"],
                     what="both pods named CrashLoopBackOff")
    message = conditions(cluster)["LearnerApiAvailable"]["message"]
    assert "container learner-api" in message
    assert line in message
    assert condition(cluster, "Ready") == ("False", "CrashLoopBackOff")
    await eventually(lambda: [e for e in cluster.all("v1", "events", NS) if e.get("reason") == "CrashLoopBackOff"],
                     what="a Warning event")


async def test_out_of_memory_images_that_cannot_be_pulled_and_unschedulable_pods(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await converged(cluster, operator)
    cluster.set_deployment_status(NS, API, ready=0)
    cluster.set_deployment_status(NS, EVALUATOR, ready=0)
    [evaluator] = await pods_of(cluster, EVALUATOR, 1)
    kubelet(cluster, evaluator, **crash_looping("evaluator", "", reason="OOMKilled"))
    await eventually(lambda: condition(cluster, "EvaluatorAvailable") == ("False", "OOMKilled"))
    assert "raise resources.limits.memory" in conditions(cluster)["EvaluatorAvailable"]["message"]

    first, second = await pods_of(cluster, API, 2)
    kubelet(cluster, first, phase="Pending", containerStatuses=[{
        "name": "learner-api", "ready": False, "restartCount": 0, "image": "ghcr.io/ai-platform/learner-api:nope",
        "state": {"waiting": {"reason": "ImagePullBackOff",
                              "message": 'Back-off pulling image "ghcr.io/ai-platform/learner-api:nope"'}}}])
    kubelet(cluster, second, phase="Pending", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory."}])
    await eventually(lambda: condition(cluster, "LearnerApiAvailable") in (
        ("False", "ImagePullBackOff"), ("False", "Unschedulable")))
    message = conditions(cluster)["LearnerApiAvailable"]["message"]
    assert "ghcr.io/ai-platform/learner-api:nope" in message or "Insufficient memory" in message


async def test_some_pods_failing_while_others_serve_is_degraded_not_unready(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await converged(cluster, operator)
    cluster.set_deployment_status(NS, API)
    cluster.set_deployment_status(NS, EVALUATOR)
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"))
    [pod] = await pods_of(cluster, API, 1)
    kubelet(cluster, pod, **crash_looping("learner-api", "panic: the new release cannot read its config"))
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "CrashLoopBackOff"))
    assert condition(cluster, "Ready") == ("True", "AllComponentsReady")  # it still serves
    assert "cannot read its config" in conditions(cluster)["Degraded"]["message"]

    kubelet(cluster, pod, phase="Running", containerStatuses=[{
        "name": "learner-api", "ready": True, "restartCount": 5, "image": "x", "state": {"running": {}}}])
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"), what="healed")
    await settled(cluster, operator)
    start = len(cluster.log)
    await operator.resync_now()
    await settled(cluster, operator)
    assert cluster.mutating_requests(start) == []


@pytest.mark.emulator_only("the Deployment controller writes ReplicaFailure itself on a real control plane")
async def test_pods_the_replicaset_cannot_create_are_named_with_the_refusal(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await converged(cluster, operator)
    refusal = ('pods "ai-platform-learner-api-7d9f-x" is forbidden: violates PodSecurity "restricted:latest": '
               "runAsNonRoot != true")
    cluster.edit("apps/v1", "deployments", NS, API, {"status": {"replicas": 0, "conditions": [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refusal}]}}, status=True)
    await eventually(lambda: condition(cluster, "LearnerApiAvailable") == ("False", "FailedCreate"))
    assert "violates PodSecurity" in conditions(cluster)["LearnerApiAvailable"]["message"]


def test_what_a_kubelet_reports_becomes_one_problem() -> None:
    init_failed = {"metadata": {"name": "p"}, "status": {"initContainerStatuses": [{
        "name": "migrate",
        "state": {"terminated": {"exitCode": 1, "message": "migration 0007 failed: permission denied"}},
    }]}}
    problem = pod_problem(init_failed)
    assert problem is not None
    assert (problem.reason, problem.container) == ("InitContainerFailed", "migrate")
    assert "permission denied" in problem.message
    running = {"metadata": {"name": "p"}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "c", "ready": True, "state": {"running": {}}}]}}
    assert pod_problem(running) is None
    starting = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert pod_problem(starting) is None  # not a problem yet: it is on its way
    long = crash_looping("c", "x" * 5000)
    problem = pod_problem({"metadata": {"name": "p"}, "status": long})
    assert problem is not None
    assert len(problem.message) <= 400
