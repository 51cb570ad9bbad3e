"""``spec.rollout`` and ``status.rollout``: guarded (canary) rollouts of learner-api.

Kept in a module of its own (the rest of the API is in ``v1alpha1``, which imports these classes).
With ``strategy: RollingUpdate`` (the default, and what an absent ``spec.rollout`` means) a migrated image
rolls out to every pod at once, as before. With ``strategy: Canary`` it first runs in a second Deployment
(``<name>-learner-api-canary``) whose share of the pods grows step by step, while the operator compares
the canary pods' 5xx ratio and p99 latency with the stable pods' (read from learner-api's own metrics).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic.alias_generators import to_camel

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_STEPS = 10

#: ``kubectl annotate lp NAME learner.dev/rollout=promote|abort``: an SRE steps in.
ROLLOUT_ANNOTATION = "learner.dev/rollout"
ROLLOUT_COMMANDS = ("promote", "abort", "retry")


def duration_seconds(text: str) -> float:
    """ "1m30s" -> 90.0 (the pattern above is checked at admission and by the model)."""
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class RolloutStep(_Model):
    weight: int = Field(ge=1, le=99, description="Share of learner-api pods, in percent, on the new image.")
    pause: str = Field(default="2m", pattern=DURATION_PATTERN, max_length=20,
                       description="How long the step must stay within the SLO before the next one, e.g. 2m.")


class RolloutSLO(_Model):
    """What the canary pods may not exceed, compared with the stable pods over the same time."""

    max_error_ratio_increase: float = Field(
        default=0.01, ge=0, le=1,
        description="The canary's 5xx ratio may exceed the stable pods' by at most this (0.01 = 1 point).")
    max_error_ratio: float = Field(default=0.05, ge=0, le=1,
                                   description="Ceiling of the canary's 5xx ratio, whatever the stable pods do.")
    max_latency_ratio: float = Field(
        default=1.5, ge=1, le=100,
        description="The canary's p99 latency may be at most this many times the stable pods' ...")
    max_latency_increase_ms: int = Field(
        default=50, ge=0, le=600_000,
        description="... or at most this many milliseconds above it (a breach needs both exceeded).")
    max_p99_latency_ms: int = Field(default=2000, ge=1, le=600_000,
                                    description="Ceiling of the canary's p99 latency, whatever the stable pods do.")
    min_requests: int = Field(default=100, ge=1, le=10_000_000,
                              description="Requests the canary must have answered before any verdict.")


def _default_steps() -> list[RolloutStep]:
    return [RolloutStep(weight=10, pause="2m"), RolloutStep(weight=50, pause="5m")]


def _increasing_rules() -> list[JsonValue]:
    """Strictly increasing weights, written pair by pair: CEL has no indices in its macros (and the
    Kubernetes list library's isSorted() is not in every CEL implementation)."""
    pairs = " && ".join(f"(size(self.steps) <= {i} || self.steps[{i}].weight > self.steps[{i - 1}].weight)"
                        for i in range(1, MAX_STEPS))
    return [{"rule": pairs, "message": "rollout.steps: each step's weight must be above the previous one's",
             "reason": "FieldValueInvalid"},
            {"rule": "self.strategy != 'Canary' || size(self.steps) > 0",
             "message": "rollout.steps: a Canary rollout needs at least one step", "reason": "FieldValueRequired"}]


class RolloutSpec(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _increasing_rules()})

    strategy: Literal["RollingUpdate", "Canary"] = Field(
        default="RollingUpdate",
        description="RollingUpdate: a migrated image goes to every pod at once. Canary: step by step, guarded by "
        "the SLO, rolled back on a breach.")
    steps: list[RolloutStep] = Field(
        default_factory=_default_steps, max_length=MAX_STEPS,
        description="Shares of pods on the new image, increasing; after the last step it takes all pods.")
    slo: RolloutSLO = Field(default_factory=RolloutSLO)
    analysis_interval: str = Field(default="10s", pattern=DURATION_PATTERN, max_length=20,
                                   description="How often the canary's metrics are read and judged.")

    @model_validator(mode="after")
    def _steps_increase(self) -> RolloutSpec:
        weights = [step.weight for step in self.steps]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"rollout.steps: each step's weight must be above the previous one's (got {weights})")
        if self.strategy == "Canary" and not weights:
            raise ValueError("rollout.steps: a Canary rollout needs at least one step")
        return self

    @property
    def canary(self) -> bool:
        return self.strategy == "Canary"


def canary_replicas(weight: int, stable: int) -> int:
    """Canary pods for ``weight`` percent of all pods when the stable Deployment keeps ``stable`` (its full size:
    the HPA's, or spec.learnerApi.replicas): canary / (stable + canary) is as close to weight as whole pods allow,
    never less than one pod."""
    share = weight / 100
    return max(1, math.ceil(share * max(stable, 1) / (1 - share) - 1e-9))


# ---------------------------------------------------------------------------------------------
# Status

RolloutPhase = Literal["", "Progressing", "Succeeded", "RolledBack", "Aborted"]


class RolloutImage(_Model):
    repository: str = ""
    tag: str = ""
    digest: str = ""


class RolloutFigures(_Model):
    """What one track answered during the analysis (5xx counted as errors; probes and /metrics left out)."""

    pods: int = 0
    requests: int = 0
    errors: int = 0
    error_ratio: float = Field(default=0.0, description="5xx answers / requests.")
    p99_ms: float = Field(default=0.0, description="99th percentile latency in milliseconds (histogram estimate).")


class RolloutStatus(_Model):
    phase: RolloutPhase = ""
    image: str = Field(default="", description="The image being (or last) rolled out as a canary.")
    stable: RolloutImage = Field(default_factory=RolloutImage,
                                 description="The image the stable Deployment runs (the last promoted one).")
    step: int = Field(default=0, ge=0, description="The current step (1-based); 0: no canary.")
    steps: int = Field(default=0, ge=0)
    canary_weight: int = Field(default=0, ge=0, le=100, description="Share of learner-api pods on the canary, %.")
    step_started_at: str = ""
    verdict: str = Field(default="", description="The last verdict: Healthy, Waiting, ErrorRatio, Latency, "
                         "Promoted, Aborted...")
    message: str = Field(default="", max_length=4096)
    canary: RolloutFigures = Field(default_factory=RolloutFigures)
    baseline: RolloutFigures = Field(default_factory=RolloutFigures, description="The stable pods' figures.")
    failed_image: str = Field(default="", description="An image rolled back or aborted: it is not tried again "
                              "(set a new tag, or annotate learner.dev/rollout=retry).")
