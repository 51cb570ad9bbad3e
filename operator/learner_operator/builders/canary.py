"""The canary: a second learner-api Deployment, ``<name>-learner-api-canary``, on the image being rolled out.

Its pods carry the Service's selector labels (so the Service sends them their share of the requests: the
traffic splits by pod count, with no mesh or ingress controller) plus ``learner.dev/track: canary``, which
its own selector adds and the stable Deployment's lacks; the stable Deployment's ReplicaSets never adopt them
(a pod with a controller reference is never adopted). The stable Deployment keeps its full size (the HPA's,
or spec.learnerApi.replicas) during the whole rollout, so a rollback only deletes the canary; the canary's
replicas are set by the operator (models.rollout.canary_replicas), never by the HPA.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from learner_operator.builders import common as c
from learner_operator.builders import learner_api

TRACK_LABEL = "learner.dev/track"
CANARY = "canary"


def name(p: c.Platform) -> str:
    return f"{c.api_name(p)}-canary"


def deployment(p: c.Platform, plan: c.CanaryPlan) -> c.Manifest:
    on = dataclasses.replace(p, spec=p.spec.model_copy(update={"image": plan.image}), serving_image=None, canary=None)
    template: dict[str, Any] = learner_api.pod_template(on)
    template["metadata"]["labels"][TRACK_LABEL] = CANARY
    metadata = c.metadata(on, name(p), learner_api.APP, learner_api.COMPONENT)
    metadata["labels"][TRACK_LABEL] = CANARY
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": {**c.selector_labels(p, learner_api.APP), TRACK_LABEL: CANARY}},
            "revisionHistoryLimit": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": template,
        },
    }
