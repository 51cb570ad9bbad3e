"""Guarded rollouts: the real operator judges real learner-api processes (tests/pods_harness.py) by their metrics.

The emulator stands in for the API server; the harness plays the Deployment controller and the kubelet with
real `learner-api serve` processes, and a Service's traffic with an open-loop request generator. A "build" is
an image tag whose processes get learner-api's test-only fault switches: ``v2`` is good, ``v2-5xx`` answers
half of its requests with 500, ``v2-slow`` takes 900 ms per request. Each test checks what an SRE would look
at: the Deployments' images, ``status.rollout``, the conditions and the events.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import admin_database_url, database_url  # noqa: F401  # fixtures: a migrated database
from tests.kube_emulator import Cluster
from tests.operator_harness import NS, AnyCluster, Operator, eventually, resync_writes, running_operator, settled
from tests.pods_harness import PodsHarness, Traffic
from tests.test_migrations_operator import LP, REPOSITORY, SUCCESS, set_tag, started, status, warnings
from tests.test_operator import API, condition, conditions, platform_doc, ready_platform, secret
from tests.test_operator_processes import operator_process

pytestmark = [pytest.mark.operator, pytest.mark.emulator_only("the harness plays the kubelet with local processes")]

CANARY = f"{API}-canary"
BUILDS = {"v2-5xx": {"TEST_FAULT_5XX_RATIO": "0.5"}, "v2-slow": {"TEST_FAULT_LATENCY_MS": "900"}}
SERVICE_SELECTOR = {"app.kubernetes.io/name": "learner-api", "app.kubernetes.io/instance": "ai-platform"}
#: Short steps, so that a test takes seconds: 30% of the pods, then 60%, 3 s each, judged every half second.
ROLLOUT = {"strategy": "Canary", "steps": [{"weight": 30, "pause": "3s"}, {"weight": 60, "pause": "3s"}],
           "slo": {"minRequests": 40, "maxLatencyIncreaseMs": 400}, "analysisInterval": "500ms"}
#: 400 ms over stable: a good build's fresh processes on 2 busy cores (four test workers) stay well under it,
#: the slow build (900 ms a request) is far over it.
WITHIN = 120.0  # generous: learner-api processes start slowly on a loaded machine


@pytest.fixture
async def pods(cluster: Cluster, database_url: str, tmp_path: Path) -> AsyncIterator[PodsHarness]:  # noqa: F811
    async with PodsHarness(cluster, NS, database_url, tmp_path, BUILDS) as harness:
        yield harness


@pytest.fixture
async def operator(cluster: AnyCluster) -> AsyncIterator[Operator]:
    async with running_operator(cluster) as op:
        yield op


def rollout(cluster: AnyCluster) -> dict[str, Any]:
    return dict(status(cluster).get("rollout") or {})


def image(cluster: AnyCluster, name: str) -> str | None:
    deployment = cluster.get("apps/v1", "deployments", NS, name)
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"] if deployment else None


async def migrate(cluster: AnyCluster, tag: str) -> None:
    """Play the migration Job of ``tag`` to success (the gate comes before any canary)."""
    cluster.finish_job(NS, await started(cluster, tag), succeeded=True, message=SUCCESS.format("0007_startup", "-"))


async def installed(cluster: AnyCluster, operator: Operator | None, pods: PodsHarness,
                    rollout_spec: dict[str, Any] | None = None) -> None:
    """A platform on v1 with canary rollouts, its two stable pods serving."""
    doc = platform_doc(image={"tag": "v1"}, rollout=rollout_spec or ROLLOUT)
    if operator is not None:
        await ready_platform(cluster, operator, doc)
    else:
        cluster.put(secret())
        cluster.put(doc)
        await eventually(lambda: cluster.get("apps/v1", "deployments", NS, API), within=30, what="learner-api")
        cluster.scale(NS, API, 2)
    await migrate(cluster, "v1")
    await eventually(lambda: condition(cluster, "Migrated") == ("True", "MigrationSucceeded"), within=30)
    await eventually(lambda: len(pods.ready_pods(SERVICE_SELECTOR)) == 2, within=WITHIN, what="two stable pods")


async def release(cluster: AnyCluster, tag: str) -> float:
    """Set the spec's image to ``tag`` and migrate it; returns when the canary Deployment appeared."""
    set_tag(cluster, tag)
    await migrate(cluster, tag)
    await eventually(lambda: image(cluster, CANARY) == f"{REPOSITORY}:{tag}", within=30, what="the canary")
    return time.monotonic()


def report(what: str, cluster: AnyCluster, since: float, serving: float | None = None) -> None:
    r = rollout(cluster)
    window = f" ({time.monotonic() - serving:.1f} s after the first canary pod was ready)" if serving else ""
    print(f"\n{what} {time.monotonic() - since:.1f} s after the canary Deployment appeared{window}: "
          f"verdict {r.get('verdict')}; canary {r.get('canary')}; "
          f"stable {r.get('baseline')}; {r.get('message')}")


async def test_a_good_image_is_promoted_step_by_step(cluster: AnyCluster, operator: Operator,
                                                     pods: PodsHarness) -> None:
    await installed(cluster, operator, pods)
    async with Traffic(pods, SERVICE_SELECTOR):
        since = await release(cluster, "v2")
        assert image(cluster, API) == f"{REPOSITORY}:v1"  # the stable pods keep their image meanwhile
        await eventually(lambda: rollout(cluster).get("step") == 1 and rollout(cluster).get("canaryWeight") == 33,
                         within=30, what="step 1: one canary pod of three")
        seen_steps = set()

        def promoted() -> bool:
            r = rollout(cluster)
            seen_steps.add(r.get("step"))
            assert r.get("phase") != "RolledBack", f"the good build was rolled back: {r}"
            return r.get("phase") == "Succeeded"

        await eventually(promoted, within=WITHIN, what="promoted")
        report("promoted", cluster, since)
    assert {1, 2} <= seen_steps
    await eventually(lambda: image(cluster, API) == image(cluster, "ai-platform-evaluator") == f"{REPOSITORY}:v2",
                     what="the stable Deployment and the evaluator on v2")
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, CANARY) is None, what="canary deleted")
    r = rollout(cluster)
    assert (r["verdict"], r["failedImage"], r["stable"]["tag"]) == ("Promoted", "", "v2")
    assert r["canary"]["requests"] >= 40
    assert r["canary"]["errorRatio"] == 0
    assert condition(cluster, "RolledOut") == ("True", "Promoted")
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"), what="not Degraded")
    await eventually(lambda: [p.image for p in pods.ready_pods(SERVICE_SELECTOR)] == [f"{REPOSITORY}:v2"] * 2,
                     within=WITHIN, what="two stable pods on v2")
    cluster.set_deployment_status(NS, "ai-platform-evaluator")  # the harness plays only learner-api's pods
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"), within=30)
    await settled(cluster, operator)
    assert await resync_writes(cluster, operator) == []  # a finished rollout costs nothing at rest


@pytest.mark.parametrize(("tag", "verdict", "words"), [
    ("v2-5xx", "ErrorRatio", "5xx ratio: canary"),
    ("v2-slow", "Latency", "p99 latency: canary"),
], ids=["5xx", "latency"])
async def test_a_bad_image_is_rolled_back_within_its_first_step(
    cluster: AnyCluster, operator: Operator, pods: PodsHarness, tag: str, verdict: str, words: str,
) -> None:
    await installed(cluster, operator, pods)
    async with Traffic(pods, SERVICE_SELECTOR):
        since = await release(cluster, tag)
        serving: list[float] = []

        def rolled_back() -> bool:
            if not serving and (ready_at := pods.first_ready(CANARY)) is not None:
                serving.append(ready_at)  # the canary is gone once rolled back: note when it began to serve
            return rollout(cluster).get("phase") == "RolledBack"

        await eventually(rolled_back, within=WITHIN, what="rolled back")
        report("rolled back", cluster, since, serving[0] if serving else None)
    r = rollout(cluster)
    assert r["verdict"] == verdict
    assert r["failedImage"] == f"{REPOSITORY}:{tag}"
    assert f"rolled back at step 1: {words}" in r["message"]
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, CANARY) is None, what="canary deleted")
    assert image(cluster, API) == f"{REPOSITORY}:v1"  # never touched: no down-migration, no stable restart
    assert condition(cluster, "RolledOut") == ("False", "RolledBack")
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "RolledBack"), what="Degraded")
    await eventually(lambda: warnings(cluster, "RolledBack"), what="a Warning event")
    [event] = warnings(cluster, "RolledBack")
    assert words in event["message"]
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"), what="v1 serves")
    # the failed image is not tried again: a full resync changes nothing
    await settled(cluster, operator)
    assert await resync_writes(cluster, operator) == []
    assert cluster.get("apps/v1", "deployments", NS, CANARY) is None
    assert rollout(cluster)["phase"] == "RolledBack"
    # setting the stable tag back clears Degraded (the failed image stays on record)
    set_tag(cluster, "v1")
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"), within=30, what="not Degraded")
    assert condition(cluster, "RolledOut") == ("True", "Stable")
    assert rollout(cluster)["failedImage"] == f"{REPOSITORY}:{tag}"


async def test_the_annotations_abort_retry_and_promote(cluster: AnyCluster, operator: Operator,
                                                       pods: PodsHarness) -> None:
    slow_steps = {**ROLLOUT, "steps": [{"weight": 30, "pause": "10m"}]}
    await installed(cluster, operator, pods, slow_steps)

    def annotate(value: str) -> None:
        cluster.edit(*LP, NS, "ai-platform", {"metadata": {"annotations": {"learner.dev/rollout": value}}})

    def annotations() -> dict[str, str]:
        return dict((cluster.get(*LP, NS, "ai-platform") or {})["metadata"].get("annotations") or {})

    await release(cluster, "v2")
    await eventually(lambda: rollout(cluster).get("phase") == "Progressing", within=30)
    annotate("abort")
    await eventually(lambda: rollout(cluster).get("phase") == "Aborted", within=30, what="aborted")
    await eventually(lambda: "learner.dev/rollout" not in annotations(), within=30, what="annotation removed")
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, CANARY) is None, within=30)
    assert rollout(cluster)["failedImage"] == f"{REPOSITORY}:v2"
    assert "aborted by learner.dev/rollout=abort at step 1" in conditions(cluster)["RolledOut"]["message"]
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "RolloutAborted"), what="Degraded")

    annotate("retry")
    await eventually(lambda: image(cluster, CANARY) == f"{REPOSITORY}:v2", within=30, what="tried again")
    assert rollout(cluster)["failedImage"] == ""
    annotate("promote")
    await eventually(lambda: rollout(cluster).get("phase") == "Succeeded", within=30, what="promoted by hand")
    await eventually(lambda: image(cluster, API) == f"{REPOSITORY}:v2", what="the stable Deployment on v2")
    assert "promoted by learner.dev/rollout=promote" in rollout(cluster)["message"]
    await eventually(lambda: "learner.dev/rollout" not in annotations(), within=30)
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, CANARY) is None, within=30)


async def test_an_operator_killed_mid_rollout_resumes_it_from_status(
    cluster: AnyCluster, pods: PodsHarness, tmp_path: Path,
) -> None:
    steps = {**ROLLOUT, "steps": [{"weight": 30, "pause": "8s"}, {"weight": 60, "pause": "3s"}]}
    async with Traffic(pods, SERVICE_SELECTOR):
        async with operator_process(cluster, tmp_path, "first") as first:
            await installed(cluster, None, pods, steps)
            await release(cluster, "v2")
            await eventually(lambda: rollout(cluster).get("step") == 1, within=30)
            canary_uid = cluster.get("apps/v1", "deployments", NS, CANARY)["metadata"]["uid"]  # type: ignore[index]
            step_started = rollout(cluster)["stepStartedAt"]
            first.send_signal(signal.SIGKILL)
            await first.wait()
        seen: set[tuple[int, str]] = set()
        canary_uids: set[str] = set()

        def observe() -> dict[str, Any]:
            if (canary := cluster.get("apps/v1", "deployments", NS, CANARY)) is not None:
                canary_uids.add(canary["metadata"]["uid"])
            r = rollout(cluster)
            seen.add((int(r.get("step") or 0), str(r.get("stepStartedAt") or "")))
            return r

        async with operator_process(cluster, tmp_path, "second"):
            await eventually(lambda: observe().get("phase") == "Succeeded", within=WITHIN, what="promoted")
            await eventually(lambda: image(cluster, API) == f"{REPOSITORY}:v2", what="the stable Deployment on v2")
    # resumed, not restarted: step 1 kept the clock it had when the operator died, then came step 2, and the
    # canary Deployment was kept, never made again
    assert {stamp for step, stamp in seen if step == 1} <= {step_started}
    assert any(step == 2 for step, _ in seen)
    assert canary_uids == {canary_uid}
    assert rollout(cluster)["failedImage"] == ""
