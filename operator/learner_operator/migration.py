"""The migration gate: one Job per image, and learner-api and the evaluator move to an image only once the
database has been migrated for it.

Each reconcile decides from two things the operator already holds, so a resync reads nothing more: the
platform's status (the record of past migrations, which outlives the Jobs their TTL removes) and the
watched Jobs (their status comes with the watch).

- The spec's image was migrated (``status.migratedImage``): the workloads run it; nothing to do.
- Its migration failed (``status.migration.phase: Failed``): the workloads stay on the last migrated
  image and no Job is started again for it; another image (a fix, or the previous tag) moves on.
- Otherwise its Job runs, or has just finished (then its pod's termination message is read, once, for
  the schema version or the reason it failed), or is created, after the other children so that its
  ServiceAccount and ConfigMap exist.

While the spec's image is not migrated, the workloads run the last image that was. A platform with none
(new, or made by an operator before migrations were gated) knows no older image that works: its
workloads get the spec's image at once, and their pods refuse to start (learner-api's schema check)
until the Job has migrated the database.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from pydantic import ValidationError

from learner_operator import builders
from learner_operator.builders import common
from learner_operator.builders import migration as job_builder
from learner_operator.kube import ApiError, KubeApi, ref_of
from learner_operator.livestate import LiveState
from learner_operator.models import ImageSpec, LearnerPlatformSpec
from learner_operator.platforms import Snapshot
from learner_operator.status import Verdict

Logger = logging.Logger | logging.LoggerAdapter[Any]

RUNNING, SUCCEEDED, FAILED = "Running", "Succeeded", "Failed"
#: `kubectl annotate lp NAME learner.dev/retry-migration=true`: run the failed migration of the spec's image again
#: (a cause outside the image was fixed: a lock, a permission, a full disk). Removed once acted on.
RETRY_ANNOTATION = "learner.dev/retry-migration"
#: What `learner-api migrate` writes to its termination message on success (learner_api.cli).
_SCHEMA_VERSION = re.compile(r"\bschema version ([A-Za-z0-9_.-]+)")
#: The label the Job controller puts on its pods: this Job's, not an earlier Job's of the same name.
_CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
_MAX_MESSAGE = 2000


@dataclasses.dataclass(frozen=True)
class Gate:
    """What the reconcile does about migrations, and what the platform's status says about them."""

    #: The image learner-api and the evaluator run; None: the spec's.
    serving_image: ImageSpec | None
    #: The Migrated condition.
    verdict: Verdict
    #: ``schemaVersion``, ``migration`` and ``migratedImage``, complete (so that equal means unchanged).
    status: dict[str, Any]
    #: The Job to create once the other children are applied, if it does not exist yet.
    job: dict[str, Any] | None = None
    #: What kept the gate from deciding (the reconcile reports it and tries again later).
    error: str = ""
    #: A Job's outcome was read just now and is not in the status yet: the reconcile records it before it
    #: acts on it (rolls the workloads), so that no restart between the two can lose the record.
    new_outcome: bool = False


def _image_status(image: ImageSpec) -> dict[str, str]:
    return {"repository": image.repository, "tag": image.tag, "digest": image.digest or ""}


def _last_migrated(status: dict[str, Any], spec: LearnerPlatformSpec) -> ImageSpec | None:
    recorded = status.get("migratedImage") or {}
    if not recorded.get("repository") or not recorded.get("tag"):
        return None
    try:
        return ImageSpec(repository=recorded["repository"], tag=recorded["tag"],
                         digest=recorded.get("digest") or None, pull_policy=spec.image.pull_policy)
    except ValidationError:  # not what the operator wrote: as if nothing had been migrated
        return None


def _reference(platform: builders.Platform, image: ImageSpec | None) -> str:
    if image is None:
        return ""
    return common.image(dataclasses.replace(platform, spec=platform.spec.model_copy(update={"image": image})))


def job_outcome(job: dict[str, Any]) -> tuple[str, str]:
    """(Succeeded | Failed | Running, the Job's own reason and message when it failed)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return SUCCEEDED, ""
        if condition.get("type") == "Failed":
            return FAILED, f"{condition.get('reason') or 'Failed'}: {condition.get('message') or ''}".rstrip(": ")
    return RUNNING, ""


async def _termination_message(api: KubeApi, namespace: str, job: dict[str, Any], *, succeeded: bool) -> str:
    """The migrate container's last words: on success the one that exited 0, else the latest to finish."""
    uid = str((job.get("metadata") or {}).get("uid") or "")
    pods, _ = await api.list_objects("v1", "pods", namespace, f"{_CONTROLLER_UID_LABEL}={uid}")
    best: tuple[str, str] | None = None
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            if container.get("name") != job_builder.CONTAINER:
                continue
            terminated = (container.get("state") or {}).get("terminated") or {}
            if not terminated or (succeeded and terminated.get("exitCode") != 0):
                continue
            finished = str(terminated.get("finishedAt") or "")
            if best is None or finished >= best[0]:
                best = (finished, " ".join(str(terminated.get("message") or "").split()))
    return best[1] if best else ""


def schema_version_of(message: str) -> str | None:
    """The version in `learner-api migrate`'s last words ("... schema version 0007_startup_checks ...")."""
    found = _SCHEMA_VERSION.search(message)
    return found.group(1) if found else None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 3] + "..."


async def decide(
    api: KubeApi, cr: Snapshot, spec: LearnerPlatformSpec, jobs: dict[str, dict[str, Any]],
) -> Gate:
    """The gate for this reconcile; ``jobs`` are the platform's live Jobs by name. Reads pods only when a
    Job has just finished; never writes."""
    platform = builders.Platform(cr.name, cr.namespace, cr.uid, spec)
    target, name = common.image(platform), job_builder.job_name(platform)
    status = cr.status  # unpacked once
    record = status.get("migration") or {}
    schema = str(status.get("schemaVersion") or "")
    migrated = _last_migrated(status, spec)
    held = _reference(platform, migrated)
    stay = (f"learner-api and the evaluator stay on {held} until it succeeds" if held
            else "the pods start once it succeeds (they refuse a database that lacks their migrations)")

    def gate(phase: str, verdict: Verdict, *, serving: ImageSpec | None, message: str = "",
             version: str = schema, migrated_now: ImageSpec | None = migrated, **extra: Any) -> Gate:
        status = {"schemaVersion": version,
                  "migration": {"image": target, "job": name, "phase": phase, "message": message},
                  "migratedImage": _image_status(migrated_now) if migrated_now else
                  {"repository": "", "tag": "", "digest": ""}}
        return Gate(serving, verdict, status, **extra)

    if held == target:
        return gate(SUCCEEDED, _succeeded(schema or "unknown", target), serving=None)
    if record.get("image") == target and record.get("phase") == FAILED:
        message = str(record.get("message") or "")
        return gate(FAILED, _failed(name, target, message, held), serving=migrated, message=message)

    # The same words whether the Job is being created or runs: a status that changed only with them would be
    # written again at the next resync, for nothing.
    running = Verdict("False", "MigrationRunning", f"Job {name} is migrating the database for {target}; {stay}")
    live = jobs.get(name)
    if live is None:
        return gate(RUNNING, running, serving=migrated, job=job_builder.job(platform))
    outcome, reason = job_outcome(live)
    if outcome == RUNNING:
        return gate(RUNNING, running, serving=migrated)
    try:
        said = await _termination_message(api, cr.namespace, live, succeeded=outcome == SUCCEEDED)
    except ApiError as exc:
        return gate(RUNNING, running, serving=migrated, error=(
            f"Job {name} has finished, but its pod's termination message could not be read: "
            f"{exc.message or exc.reason}"))
    if outcome == SUCCEEDED:
        # Never lower: migrations are never undone, so a Job that ran earlier (the previous image's, still
        # kept after a rollback) tells an older version than the database holds. Versions sort as the runner
        # applies them.
        version = max((v for v in (schema, schema_version_of(said)) if v and v != "unknown"), default="unknown")
        return gate(SUCCEEDED, _succeeded(version, target), serving=None, version=version, migrated_now=spec.image,
                    new_outcome=True)
    message = _clip("; ".join(part for part in (reason, said) if part))
    return gate(FAILED, _failed(name, target, message, held), serving=migrated, message=message, new_outcome=True)


def _succeeded(version: str, target: str) -> Verdict:
    """The same words right after the Job and on every reconcile after it: no status write at rest."""
    return Verdict("True", "MigrationSucceeded", f"schema version {version}; {target} is migrated")


def _failed(job: str, target: str, message: str, held: str) -> Verdict:
    serving = f"learner-api and the evaluator stay on {held}" if held else "the pods cannot start"
    return Verdict("False", "MigrationFailed", (
        f"Job {job} failed to migrate the database for {target}: {message or 'no message'}; {serving}. "
        f"Fix the cause and set a new image tag, or set the previous one back; "
        f"`kubectl logs job/{job}` while the Job is kept"))


async def start(api: KubeApi, live: LiveState, owner_uid: str, job: dict[str, Any], logger: Logger) -> str:
    """Create the Job; returns what went wrong, or "" (never applied again: see builders.migration)."""
    name = job["metadata"]["name"]
    try:
        answer = await api.create(ref_of(job), job)
    except ApiError as exc:
        if exc.status == 409:  # ours, created by a process whose answer was lost: the watch brings it
            return (f"Job {name}: it exists already but is not (yet) seen as this platform's; "
                    f"if it is not, delete it")
        return f"Job {name}: {exc.message or exc.reason}"
    live.remember(owner_uid, answer)
    logger.info("Created Job %s to migrate the database for %s", name,
                job["metadata"]["annotations"][job_builder.IMAGE_ANNOTATION])
    return ""


async def forget_failure(
    api: KubeApi, live: LiveState, cr: Snapshot, spec: LearnerPlatformSpec, jobs: dict[str, dict[str, Any]],
    logger: Logger,
) -> dict[str, Any] | None:
    """For the retry annotation: when the spec's image's migration failed, delete its Job (the gate then makes
    it again) and return the ``migration`` status that forgets the failure; None when there is nothing to retry."""
    platform = builders.Platform(cr.name, cr.namespace, cr.uid, spec)
    target, name = common.image(platform), job_builder.job_name(platform)
    record = cr.status.get("migration") or {}
    if record.get("image") != target or record.get("phase") != FAILED:
        logger.info("%s: the migration of %s has not failed: nothing to retry", RETRY_ANNOTATION, target)
        return None
    if (job := jobs.pop(name, None)) is not None:
        await api.delete(ref_of(job))  # its pods go with it (background propagation)
        live.forget(cr.uid, "Job", name, str((job.get("metadata") or {}).get("resourceVersion", "")))
    logger.info("%s: the migration of %s runs again", RETRY_ANNOTATION, target)
    return {"image": target, "job": name, "phase": RUNNING, "message": ""}
