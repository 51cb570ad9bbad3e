"""The migration Job: `learner-api migrate` once per image, before learner-api and the evaluator roll to it.

An init container migrated as soon as the first new pod started, while old pods still served, and a
migration that failed left new pods crash-looping with nothing in the platform's status. One Job per
image instead runs it once, the operator watches it, and the Deployments move to the new image only
when it has succeeded. The name carries a hash of the image: a new image is a new Job, and the same
image never gets a second one (the outcome is kept in the platform's status, so a Job that its TTL
removed is not run again either).
"""

from __future__ import annotations

import hashlib

from learner_operator.builders import common as c

APP = "learner-api-migrate"
COMPONENT = "migration"
CONTAINER = c.MIGRATE_CONTAINER
#: On the Job: the image it migrates to, as the spec names it (for people; the operator uses its name).
IMAGE_ANNOTATION = "learner.dev/image"
#: A finished Job stays a day, long enough to read its pod's logs; its outcome lives in the status.
TTL_SECONDS_AFTER_FINISHED = 86400


def job_name(p: c.Platform) -> str:
    """``<name>-migrate-<8 hex of the image>``: at most 57 characters (names are at most 40), so the pods'
    ``<job>-<5 random>`` names and the ``job-name`` label stay within 63."""
    return f"{p.name}-migrate-{hashlib.sha256(c.image(p).encode()).hexdigest()[:8]}"


def job(p: c.Platform) -> c.Manifest:
    """The Job for the spec's image. Created once, never applied again: a Job's pod template is immutable."""
    volume, mount = c.tmp_volume()
    meta = c.metadata(p, job_name(p), APP, COMPONENT)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**meta, "annotations": {IMAGE_ANNOTATION: c.image(p)}},
        "spec": {
            "backoffLimit": p.spec.migration.backoff_limit,
            "activeDeadlineSeconds": p.spec.migration.active_deadline_seconds,
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
            "template": {
                "metadata": {"labels": c.labels(p, APP, COMPONENT)},
                "spec": {
                    # A new pod per attempt, each with its own termination message.
                    "restartPolicy": "Never",
                    # learner-api's: no token is mounted, and the pod never talks to the Kubernetes API.
                    "serviceAccountName": c.api_name(p),
                    "automountServiceAccountToken": False,
                    "securityContext": c.pod_security_context(),
                    "containers": [{
                        "name": CONTAINER,
                        "image": c.image(p),
                        "imagePullPolicy": p.spec.image.pull_policy,
                        "command": ["learner-api"],
                        "args": ["migrate"],
                        # `learner-api migrate` leaves "schema version X" (or why it failed) in one line,
                        # which the operator reads into the platform's status.
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "envFrom": [{"configMapRef": {"name": c.config_name(p)}}],
                        "env": c.secret_env(p, CONTAINER),
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                      "limits": {"cpu": "500m", "memory": "128Mi"}},
                        "securityContext": c.container_security_context(),
                        "volumeMounts": [mount],
                    }],
                    "volumes": [volume],
                },
            },
        },
    }
