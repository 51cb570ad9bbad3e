"""Seamless upgrades: a migration Job gates each rollout (the real operator against the `cluster` fixture).

On the emulator the test plays the Job controller and the kubelet (``start_job``/``finish_job``: the
Job's pods end with a termination message, the Job gets its terminal condition); with a real
kube-controller-manager the Job controller makes the pods and the test ends them as a kubelet would.
The test plays the TTL controller (``remove``), and checks at each step what a platform team would look
at: the Deployments' images, the conditions, ``status.schemaVersion`` and the events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from tests.operator_harness import NS, AnyCluster, Operator, eventually, resync_writes, running_operator, settled
from tests.test_operator import API, EVALUATOR, condition, conditions, platform_doc, ready_platform

pytestmark = pytest.mark.operator

LP = ("learner.dev/v1alpha1", "learnerplatforms")
REPOSITORY = "ghcr.io/ai-platform/learner-api"
SUCCESS = "learner-api migrate: schema version {} (applied {})"
FAILURE = ('learner-api migrate: refusing to start: migration 0008_rename_title failed: column "title" of '
           'relation "courses" does not exist')


@pytest.fixture
async def operator(cluster: AnyCluster) -> AsyncIterator[Operator]:
    async with running_operator(cluster) as op:
        yield op


def images(cluster: AnyCluster) -> tuple[str, str]:
    """The images the learner-api and evaluator Deployments run."""
    return tuple(  # type: ignore[return-value]
        (cluster.get("apps/v1", "deployments", NS, name) or {})["spec"]["template"]["spec"]["containers"][0]["image"]
        for name in (API, EVALUATOR))


def on(tag: str) -> tuple[str, str]:
    return (f"{REPOSITORY}:{tag}",) * 2


def jobs(cluster: AnyCluster) -> dict[str, dict[str, Any]]:
    return {job["metadata"]["name"]: job for job in cluster.all("batch/v1", "jobs", NS)}


def status(cluster: AnyCluster) -> dict[str, Any]:
    return dict((cluster.get(*LP, NS, "ai-platform") or {}).get("status") or {})


def warnings(cluster: AnyCluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.all("v1", "events", NS) if e.get("reason") == reason and e.get("type") == "Warning"]


def job_for(cluster: AnyCluster, tag: str) -> str:
    """The name of the one Job that migrates to ``tag`` (fails the test when there is none, or two)."""
    [name] = [name for name, job in jobs(cluster).items()
              if job["metadata"]["annotations"]["learner.dev/image"] == f"{REPOSITORY}:{tag}"]
    return name


async def started(cluster: AnyCluster, tag: str) -> str:
    await eventually(lambda: any(j["metadata"]["annotations"]["learner.dev/image"].endswith(f":{tag}")
                                 for j in jobs(cluster).values()), what=f"a migration Job for {tag}")
    return job_for(cluster, tag)


def set_tag(cluster: AnyCluster, tag: str) -> None:
    cluster.edit(*LP, NS, "ai-platform", {"spec": {"image": {"tag": tag}}})


def pods_ready(cluster: AnyCluster) -> None:
    """Play the Deployment controller: the current templates' pods are all ready."""
    cluster.set_deployment_status(NS, API)
    cluster.set_deployment_status(NS, EVALUATOR)


async def migrated_platform(cluster: AnyCluster, operator: Operator, tag: str = "v1") -> None:
    """A platform installed at ``tag``: its first migration succeeded and its pods are ready."""
    await ready_platform(cluster, operator, platform_doc(image={"tag": tag}))
    cluster.finish_job(NS, await started(cluster, tag), succeeded=True, message=SUCCESS.format("0007_startup", "all"))
    await eventually(lambda: condition(cluster, "Migrated") == ("True", "MigrationSucceeded"), what="migrated")
    await settled(cluster, operator)


async def test_first_install_runs_one_restricted_job_owned_by_the_platform(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await ready_platform(cluster, operator, platform_doc(image={"tag": "v1"}))
    name = await started(cluster, "v1")
    assert name.startswith("ai-platform-migrate-")
    assert len(name) == len("ai-platform-migrate-") + 8
    job = jobs(cluster)[name]
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("LearnerPlatform", "ai-platform", True)
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (2, 900, 86400)
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert (container["args"], container["image"]) == (["migrate"], f"{REPOSITORY}:v1")
    assert {e["name"] for e in container["env"]} == {"DATABASE_MIGRATION_URL", "DATABASE_URL"}
    # No older image is known to work with the database: the pods run v1 at once (and refuse to start until
    # the schema is there), and the platform says that it is migrating.
    assert images(cluster) == on("v1")
    assert condition(cluster, "Migrated") == ("False", "MigrationRunning")
    assert name in conditions(cluster)["Migrated"]["message"]
    assert condition(cluster, "Progressing") == ("True", "MigrationRunning")
    assert await resync_writes(cluster, operator) == []  # a running Job costs nothing at rest

    cluster.finish_job(NS, name, succeeded=True, message=SUCCESS.format("0007_startup", "0001_tenants, ..."))
    await eventually(lambda: condition(cluster, "Migrated") == ("True", "MigrationSucceeded"))
    # the outcome is written before the rollout goes on (a restart in between cannot lose it): wait for the rest
    await settled(cluster, operator)
    assert status(cluster)["schemaVersion"] == "0007_startup"
    assert status(cluster)["migratedImage"] == {"repository": REPOSITORY, "tag": "v1", "digest": ""}
    assert "schema version 0007_startup" in conditions(cluster)["Migrated"]["message"]
    assert condition(cluster, "Progressing") == ("False", "RolloutComplete")
    assert condition(cluster, "Ready") == ("True", "AllComponentsReady")
    assert list(jobs(cluster)) == [name]


async def test_a_new_image_waits_for_its_migration_then_both_deployments_roll(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await migrated_platform(cluster, operator, "v1")
    set_tag(cluster, "v2")
    v2 = await started(cluster, "v2")
    await settled(cluster, operator)
    # The old version keeps serving, untouched, while the database is migrated.
    assert images(cluster) == on("v1")
    assert condition(cluster, "Ready") == ("True", "AllComponentsReady")
    assert condition(cluster, "Migrated") == ("False", "MigrationRunning")
    assert condition(cluster, "Progressing") == ("True", "MigrationRunning")
    assert f"stay on {REPOSITORY}:v1" in conditions(cluster)["Migrated"]["message"]
    assert await resync_writes(cluster, operator) == []

    cluster.start_job(NS, v2)
    await settled(cluster, operator)
    assert images(cluster) == on("v1")

    cluster.finish_job(NS, v2, succeeded=True, message=SUCCESS.format("0008_course_tags", "0008_course_tags"))
    await eventually(lambda: images(cluster) == on("v2"), what="both Deployments on v2")
    await eventually(lambda: condition(cluster, "Ready") == ("False", "RolloutInProgress"))
    assert condition(cluster, "Migrated") == ("True", "MigrationSucceeded")
    assert status(cluster)["schemaVersion"] == "0008_course_tags"
    pods_ready(cluster)
    await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"))
    await settled(cluster, operator)
    assert await resync_writes(cluster, operator) == []

    # The TTL controller removes the finished Jobs: the outcome is in the status, nothing runs again.
    for name in list(jobs(cluster)):
        cluster.remove("batch/v1", "jobs", NS, name)
    await settled(cluster, operator)
    assert jobs(cluster) == {}
    assert await resync_writes(cluster, operator) == []
    assert images(cluster) == on("v2")


async def test_a_failed_migration_leaves_the_old_version_serving_and_says_why(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await migrated_platform(cluster, operator, "v1")
    set_tag(cluster, "v2")
    v2 = await started(cluster, "v2")
    cluster.finish_job(NS, v2, succeeded=False, message=FAILURE, attempts=3)
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "MigrationFailed"))
    assert condition(cluster, "Migrated") == ("False", "MigrationFailed")
    message = conditions(cluster)["Migrated"]["message"]
    assert FAILURE in message
    assert "BackoffLimitExceeded" in message
    assert v2 in message
    assert condition(cluster, "Ready") == ("True", "AllComponentsReady")  # v1 serves on
    assert images(cluster) == on("v1")
    [event] = warnings(cluster, "MigrationFailed")
    assert FAILURE in event["message"]
    assert status(cluster)["migration"]["phase"] == "Failed"

    # Neither a resync nor the TTL controller removing the failed Job starts it again.
    assert await resync_writes(cluster, operator) == []
    cluster.remove("batch/v1", "jobs", NS, v2)
    await settled(cluster, operator)
    assert await resync_writes(cluster, operator) == []
    assert jobs(cluster).keys() == {job_for(cluster, "v1")}
    assert len(warnings(cluster, "MigrationFailed")) == 1

    # A fixed image gets a Job of its own, and rolls once it succeeds.
    set_tag(cluster, "v3")
    v3 = await started(cluster, "v3")
    await eventually(lambda: condition(cluster, "Migrated") == ("False", "MigrationRunning"))
    cluster.finish_job(NS, v3, succeeded=True, message=SUCCESS.format("0008_course_tags_fixed", "it"))
    await eventually(lambda: images(cluster) == on("v3"))
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"))
    assert status(cluster)["schemaVersion"] == "0008_course_tags_fixed"


async def test_rolling_back_to_the_migrated_tag_needs_no_job(cluster: AnyCluster, operator: Operator) -> None:
    await migrated_platform(cluster, operator, "v1")
    set_tag(cluster, "v2")
    cluster.finish_job(NS, await started(cluster, "v2"), succeeded=False, message=FAILURE)
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "MigrationFailed"))
    count = len(jobs(cluster))
    set_tag(cluster, "v1")
    await eventually(lambda: condition(cluster, "Migrated") == ("True", "MigrationSucceeded"))
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"))
    await settled(cluster, operator)
    assert len(jobs(cluster)) == count
    assert images(cluster) == on("v1")
    assert status(cluster)["schemaVersion"] == "0007_startup"


async def test_rolling_back_a_successful_upgrade_keeps_the_newer_schema_version(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """No down migrations: the previous release runs on the newer schema (expand/contract), which stays."""
    await migrated_platform(cluster, operator, "v1")
    v1 = job_for(cluster, "v1")
    set_tag(cluster, "v2")
    cluster.finish_job(NS, await started(cluster, "v2"), succeeded=True, message=SUCCESS.format("0008_tags", "it"))
    await eventually(lambda: images(cluster) == on("v2"))
    # Within a day v1's finished Job is still there: it migrated for v1 already, so v1 rolls back at once.
    set_tag(cluster, "v1")
    await eventually(lambda: images(cluster) == on("v1"), what="rolled back")
    await eventually(lambda: condition(cluster, "Migrated") == ("True", "MigrationSucceeded"))
    assert status(cluster)["schemaVersion"] == "0008_tags"
    # Later its TTL removed it: the rollforward and another rollback run v1's migrate again (a no-op).
    set_tag(cluster, "v2")
    await eventually(lambda: images(cluster) == on("v2"))
    cluster.remove("batch/v1", "jobs", NS, v1)
    await settled(cluster, operator)
    set_tag(cluster, "v1")
    await eventually(lambda: v1 in jobs(cluster), what="v1's Job again")
    await settled(cluster, operator)
    assert images(cluster) == on("v2")
    cluster.finish_job(NS, v1, succeeded=True, message=SUCCESS.format("0008_tags", "nothing: up to date"))
    await eventually(lambda: images(cluster) == on("v1"))
    assert status(cluster)["schemaVersion"] == "0008_tags"


@pytest.mark.emulator_only("kmock fault injection")
async def test_an_unreadable_outcome_is_retried_not_guessed(cluster: AnyCluster, operator: Operator) -> None:
    failing = True

    def flaky(request: kmock.Request) -> Any:
        if failing:
            return kmock.KubernetesError(status=500, reason="InternalError", message="etcdserver: request timed out")
        raise NotImplementedError  # fall through to the emulator's normal behaviour

    await migrated_platform(cluster, operator, "v1")
    set_tag(cluster, "v2")
    v2 = await started(cluster, "v2")
    cluster["get", kmock.resource("", "v1", "pods")] << flaky
    cluster.finish_job(NS, v2, succeeded=True, message=SUCCESS.format("0008_course_tags", "it"))
    await eventually(lambda: condition(cluster, "Degraded") == ("True", "ApplyFailed"))
    assert "termination message could not be read: etcdserver: request timed out" in \
        conditions(cluster)["Degraded"]["message"]
    assert images(cluster) == on("v1")
    failing = False
    await eventually(lambda: images(cluster) == on("v2"), within=20, what="read on a retry, then rolled")
    await eventually(lambda: status(cluster)["schemaVersion"] == "0008_course_tags")
    await eventually(lambda: condition(cluster, "Degraded") == ("False", "AsExpected"))


async def test_the_outcome_is_recorded_before_the_workloads_roll(cluster: AnyCluster, operator: Operator) -> None:
    """The status is the record that outlives the Job (its TTL removes it): it says the image is migrated
    before any workload runs that image, so a reader that sees the new pods also sees the schema version."""
    await migrated_platform(cluster, operator, "v1")
    set_tag(cluster, "v2")
    v2 = await started(cluster, "v2")
    start = len(cluster.log)
    cluster.finish_job(NS, v2, succeeded=True, message=SUCCESS.format("0008_course_tags", "it"))
    await eventually(lambda: images(cluster) == on("v2"), what="both Deployments on v2")
    writes = cluster.mutating_requests(start)

    def first(what: str, matches: Any) -> int:
        found = [i for i, r in enumerate(writes) if r.resource and matches(r)]
        assert found, f"no {what} among {[(r.method.value, str(r.url)) for r in writes]}"
        return found[0]

    recorded = first("status write with the migrated image", lambda r: r.subresource == "status" and (
        ((r.data or {}).get("status") or {}).get("migratedImage") or {}).get("tag") == "v2")
    rolled = first("Deployment on v2", lambda r: r.resource.plural == "deployments" and json.dumps(r.data or {})
                   .find(f"{REPOSITORY}:v2") >= 0)
    assert recorded < rolled
    assert status(cluster)["schemaVersion"] == "0008_course_tags"


@pytest.mark.emulator_only("kmock fault injection")
async def test_a_recorded_outcome_outlives_its_job_and_the_operator(cluster: AnyCluster) -> None:
    """The operator stops (a crash, a lost leadership) right after the Deployments moved to the migrated image,
    before anything else is written; the TTL controller removes the Job meanwhile. The next operator must find
    the record: without it, it would roll the pods back to the old image and migrate again."""
    rolled = False

    def watch_rollout(request: kmock.Request) -> Any:
        nonlocal rolled
        rolled |= f"{REPOSITORY}:v2" in json.dumps(request.data or {})
        raise NotImplementedError  # fall through to the emulator's normal behaviour

    def crashed(request: kmock.Request) -> Any:
        if rolled and request.subresource == "status":
            return kmock.KubernetesError(status=500, reason="InternalError", message="etcdserver: request timed out")
        raise NotImplementedError

    async with running_operator(cluster) as first:
        await migrated_platform(cluster, first, "v1")
        set_tag(cluster, "v2")
        v2 = await started(cluster, "v2")
        cluster["patch", kmock.resource("apps", "v1", "deployments")] << watch_rollout
        cluster["patch", kmock.resource(*LP[0].split("/"), LP[1])] << crashed
        cluster.finish_job(NS, v2, succeeded=True, message=SUCCESS.format("0008_course_tags", "it"))
        await eventually(lambda: images(cluster) == on("v2"), what="both Deployments on v2")
    cluster.remove("batch/v1", "jobs", NS, v2)
    rolled = False
    start = len(cluster.log)
    async with running_operator(cluster) as second:
        await eventually(lambda: condition(cluster, "Migrated") == ("True", "MigrationSucceeded"))
        await settled(cluster, second)
        assert images(cluster) == on("v2")
    assert status(cluster)["schemaVersion"] == "0008_course_tags"
    assert [r.method.value for r in cluster.mutating_requests(start) if r.resource and r.resource.plural == "jobs"] \
        == []  # nothing migrated twice


@pytest.mark.emulator_only("a real Job controller would stop the Job only after its 15-minute deadline")
async def test_a_migration_stopped_at_its_deadline_is_reported(cluster: AnyCluster, operator: Operator) -> None:
    await migrated_platform(cluster, operator, "v1")
    set_tag(cluster, "v2")
    cluster.finish_job(NS, await started(cluster, "v2"), succeeded=False, message="", reason="DeadlineExceeded")
    await eventually(lambda: condition(cluster, "Migrated") == ("False", "MigrationFailed"))
    assert "DeadlineExceeded: Job was active longer than specified deadline" in \
        conditions(cluster)["Migrated"]["message"]


async def test_a_failed_first_migration_is_why_the_platform_is_not_ready(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await ready_platform(cluster, operator, platform_doc(image={"tag": "v1"}))
    cluster.set_deployment_status(NS, API, ready=0)  # the pods refuse a database without its schema
    cluster.finish_job(NS, await started(cluster, "v1"), succeeded=False, message=FAILURE)
    await eventually(lambda: condition(cluster, "Ready") == ("False", "MigrationFailed"))
    assert condition(cluster, "Degraded") == ("True", "MigrationFailed")
    assert "the pods cannot start" in conditions(cluster)["Ready"]["message"]
    await settled(cluster, operator)
    assert len(warnings(cluster, "MigrationFailed")) == 1


async def test_the_operator_restarted_mid_migration_picks_up_the_running_job(cluster: AnyCluster) -> None:
    async with running_operator(cluster) as first:
        await migrated_platform(cluster, first, "v1")
        set_tag(cluster, "v2")
        v2 = await started(cluster, "v2")
        await settled(cluster, first)
    start = len(cluster.log)
    async with running_operator(cluster) as second:
        await settled(cluster, second)
        await second.resync_now()
        await settled(cluster, second)
        assert second.writes == 0  # no second Job, no status write: it found the migration where it was
        # One Job per image and v2's the same one (a list comes in name order, as etcd keeps it, not by age).
        assert sorted(job["metadata"]["annotations"]["learner.dev/image"] for job in jobs(cluster).values()) == [
            f"{REPOSITORY}:v1", f"{REPOSITORY}:v2"]
        assert job_for(cluster, "v2") == v2
        assert images(cluster) == on("v1")
        cluster.finish_job(NS, v2, succeeded=True, message=SUCCESS.format("0008_course_tags", "it"))
        await eventually(lambda: images(cluster) == on("v2"))
    assert [(r.resource.plural, r.method.value) for r in cluster.mutating_requests(start)
            if r.resource and r.resource.plural == "jobs"] == []


async def test_a_job_that_finished_while_no_operator_ran_is_read_once(cluster: AnyCluster) -> None:
    async with running_operator(cluster) as first:
        await migrated_platform(cluster, first, "v1")
        set_tag(cluster, "v2")
        v2 = await started(cluster, "v2")
        await settled(cluster, first)
    cluster.finish_job(NS, v2, succeeded=True, message=SUCCESS.format("0008_course_tags", "it"))
    async with running_operator(cluster) as second:
        await eventually(lambda: images(cluster) == on("v2"))
        await eventually(lambda: status(cluster)["schemaVersion"] == "0008_course_tags")
        await settled(cluster, second)
        start = len(cluster.log)
        await second.resync_now()
        await settled(cluster, second)
        reads = [r.resource.plural for r in cluster.log[start:] if r.resource and r.resource.plural == "pods"]
        assert reads == []  # the outcome is in the status now: the pod is not read again


async def test_paused_pauses_migrations_too(cluster: AnyCluster, operator: Operator) -> None:
    await migrated_platform(cluster, operator, "v1")
    cluster.edit(*LP, NS, "ai-platform", {"spec": {"paused": True}})
    await eventually(lambda: condition(cluster, "Ready") == ("False", "Paused"))
    set_tag(cluster, "v2")
    await settled(cluster, operator)
    assert [j for j in jobs(cluster).values() if j["metadata"]["annotations"]["learner.dev/image"].endswith(":v2")] \
        == []
    cluster.edit(*LP, NS, "ai-platform", {"spec": {"paused": False}})
    v2 = await started(cluster, "v2")
    await settled(cluster, operator)
    assert images(cluster) == on("v1")
    cluster.finish_job(NS, v2, succeeded=True, message=SUCCESS.format("0008_course_tags", "it"))
    await eventually(lambda: images(cluster) == on("v2"))


async def test_the_retry_annotation_runs_a_failed_migration_again_for_the_same_image(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await migrated_platform(cluster, operator)
    set_tag(cluster, "v2")
    first = await started(cluster, "v2")
    first_uid = jobs(cluster)[first]["metadata"]["uid"]
    cluster.finish_job(NS, first, succeeded=False, message=FAILURE)
    await eventually(lambda: condition(cluster, "Migrated") == ("False", "MigrationFailed"))
    await settled(cluster, operator)
    assert jobs(cluster)[first]["metadata"]["uid"] == first_uid  # a failure alone is never retried

    # the cause was outside the image (a lock, a grant): the SRE asks for another run of the same image
    cluster.edit(*LP, NS, "ai-platform", {"metadata": {"annotations": {"learner.dev/retry-migration": "true"}}})
    await eventually(lambda: first in jobs(cluster) and jobs(cluster)[first]["metadata"]["uid"] != first_uid,
                     what="the Job made again")
    await eventually(lambda: condition(cluster, "Migrated") == ("False", "MigrationRunning"), what="running again")
    await eventually(lambda: "learner.dev/retry-migration" not in (
        (cluster.get(*LP, NS, "ai-platform") or {})["metadata"].get("annotations") or {}), what="annotation removed")
    assert images(cluster) == on("v1")
    cluster.finish_job(NS, first, succeeded=True, message=SUCCESS.format("0008_rename_title", "0008_rename_title"))
    await eventually(lambda: images(cluster) == on("v2"), what="both roll once it succeeded")
    assert condition(cluster, "Migrated") == ("True", "MigrationSucceeded")
