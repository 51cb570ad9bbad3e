"""Guarded rollouts (``spec.rollout.strategy: Canary``): the state machine behind the canary Deployment.

It runs after the migration gate (learner_operator.migration), so the image it rolls out is always one whose
migration succeeded: the database already has what both images need (migrations expand now and contract a
release later), and a rollback never needs a down-migration.

Everything a reconcile needs to carry on is in ``status.rollout`` (the image under way, the stable image, the
step and when it started, the failed image): an operator restart or a new leader resumes the rollout where the
status says it is. Only the stable pods' counters at the start of the analysis are kept in memory (a restart
takes them again); the canary pods are new with each rollout, so their counters since start are the canary's.

Each analysis (every ``analysisInterval``) lists the platform's learner-api pods (one list request), reads
every running pod's /metrics (learner_operator.kube.scrape) and compares the tracks:

- the canary answered fewer than ``slo.minRequests`` requests: no verdict yet (Waiting);
- its 5xx ratio above ``slo.maxErrorRatio``, or above the stable pods' by more than ``slo.maxErrorRatioIncrease``;
  or its p99 latency above ``slo.maxP99LatencyMs``, or above the stable pods' both ``slo.maxLatencyRatio`` times
  and ``slo.maxLatencyIncreaseMs`` more: rolled back at once (the stable pods are compared only once they
  answered ``minRequests`` themselves);
- healthy for the step's ``pause``: the next step, and after the last one the image is promoted (the stable
  Deployment takes it with its own RollingUpdate, the canary is deleted).

A rollback deletes the canary (the stable Deployment never shrank) and records the image in
``status.rollout.failedImage``: it is not rolled out again until another image is set, or an SRE asks for it
(``learner.dev/rollout=retry``). ``kubectl annotate lp NAME learner.dev/rollout=promote|abort|retry`` is
honoured at the next reconcile, then removed.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any

from pydantic import ValidationError

from learner_operator.builders import CanaryPlan, canary, learner_api
from learner_operator.kube import KubeApi
from learner_operator.kube.scrape import PodMetrics, Scraper, quantile, total
from learner_operator.models import ImageSpec, LearnerPlatformSpec
from learner_operator.models.rollout import ROLLOUT_ANNOTATION, ROLLOUT_COMMANDS, canary_replicas, duration_seconds

__all__ = ["CONDITION", "PROGRESSING", "ROLLOUT_ANNOTATION", "Inputs", "Memory", "Plan", "decide", "image_of",
           "judge", "reference"]
from learner_operator.platforms import Snapshot
from learner_operator.status import PodProblem, Verdict
from learner_operator.timing import Later

Logger = logging.Logger | logging.LoggerAdapter[Any]

PROGRESSING, SUCCEEDED, ROLLED_BACK, ABORTED = "Progressing", "Succeeded", "RolledBack", "Aborted"
CONDITION = "RolledOut"


@dataclasses.dataclass
class Memory:
    """What the analyses of one operator process keep between reconciles: the stable pods' counters when the
    analysis of a rollout started (by platform uid, then pod name), and the image they belong to."""

    baselines: dict[str, tuple[str, dict[str, PodMetrics]]] = dataclasses.field(default_factory=dict)
    scraper: Scraper = dataclasses.field(default_factory=Scraper)

    def forget(self, uid: str) -> None:
        self.baselines.pop(uid, None)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the reconcile does about the rollout."""

    #: The image of the stable learner-api Deployment and of the evaluator (None: the gate's choice, as before).
    stable_image: ImageSpec | None
    canary: CanaryPlan | None
    #: ``status.rollout`` (complete), or None: not written (strategy RollingUpdate and no rollout ever ran).
    status: dict[str, Any] | None
    #: The RolledOut condition (None: left as it is).
    verdict: Verdict | None
    #: Seconds until the next analysis (None: nothing to watch).
    again: Later | None = None
    #: The learner.dev/rollout annotation was acted on: remove it.
    acknowledge: bool = False
    #: The status must be written before the children follow it (a step, a promotion or a rollback).
    record: bool = False


def reference(image: ImageSpec) -> str:
    return f"{image.repository}@{image.digest}" if image.digest else f"{image.repository}:{image.tag}"


def _image_status(image: ImageSpec) -> dict[str, str]:
    return {"repository": image.repository, "tag": image.tag, "digest": image.digest or ""}


def image_of(recorded: dict[str, Any], spec: LearnerPlatformSpec) -> ImageSpec | None:
    if not recorded.get("repository") or not recorded.get("tag"):
        return None
    try:
        return ImageSpec(repository=recorded["repository"], tag=recorded["tag"], digest=recorded.get("digest") or None,
                         pull_policy=spec.image.pull_policy)
    except ValidationError:
        return None


def _running_image(live: dict[str, Any] | None, spec: LearnerPlatformSpec) -> ImageSpec | None:
    """The image the stable Deployment runs now ("repository:tag"), when the rollout had no record yet."""
    containers = (((live or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
    text = str(containers[0].get("image") or "")
    repository, _, tag = text.rpartition(":")
    if not repository or "/" in tag or "@" in text:
        return None
    try:
        return ImageSpec(repository=repository, tag=tag, pull_policy=spec.image.pull_policy)
    except ValidationError:
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_stamp(text: str) -> datetime.datetime | None:
    for layout in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(text, layout).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    return None


def _figures(metrics: PodMetrics, pods: int) -> dict[str, Any]:
    ratio = metrics.errors / metrics.requests if metrics.requests else 0.0
    return {"pods": pods, "requests": int(metrics.requests), "errors": int(metrics.errors),
            "errorRatio": round(ratio, 4), "p99Ms": round(quantile(0.99, metrics.buckets) * 1000, 1)}


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def judge(spec: LearnerPlatformSpec, canary_figures: dict[str, Any], stable_figures: dict[str, Any]) -> tuple[str, str]:
    """("" | "Waiting" | "ErrorRatio" | "Latency", what was measured against what). Pure."""
    slo = spec.rollout.slo
    c, s = canary_figures, stable_figures
    if c["requests"] < slo.min_requests:
        return "Waiting", f"the canary answered {c['requests']} of the {slo.min_requests} requests a verdict needs"
    compared = s["requests"] >= slo.min_requests
    versus = (f"stable pods {_percent(s['errorRatio'])} of {s['requests']}" if compared
              else f"stable pods not compared: {s['requests']} requests")
    if c["errorRatio"] > slo.max_error_ratio:
        return "ErrorRatio", (f"5xx ratio: canary {_percent(c['errorRatio'])} of {c['requests']} requests is above the "
                              f"ceiling {_percent(slo.max_error_ratio)} ({versus})")
    if compared and c["errorRatio"] > s["errorRatio"] + slo.max_error_ratio_increase:
        return "ErrorRatio", (f"5xx ratio: canary {_percent(c['errorRatio'])} of {c['requests']} requests vs {versus}: "
                              f"more than {_percent(slo.max_error_ratio_increase)} above")
    latency_versus = f"stable pods {s['p99Ms']} ms" if compared else "stable pods not compared"
    if c["p99Ms"] > slo.max_p99_latency_ms:
        return "Latency", (f"p99 latency: canary {c['p99Ms']} ms is above the ceiling {slo.max_p99_latency_ms} ms "
                           f"({latency_versus})")
    if compared and c["p99Ms"] > s["p99Ms"] * slo.max_latency_ratio and \
            c["p99Ms"] - s["p99Ms"] > slo.max_latency_increase_ms:
        return "Latency", (f"p99 latency: canary {c['p99Ms']} ms vs {latency_versus}: more than "
                           f"{slo.max_latency_ratio:g}x and {slo.max_latency_increase_ms} ms above")
    return "", (f"canary 5xx {_percent(c['errorRatio'])}, p99 {c['p99Ms']} ms over {c['requests']} requests; "
                f"{versus}, p99 {s['p99Ms']} ms")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What one decision looks at; gathered by the reconcile."""

    cr: Snapshot
    spec: LearnerPlatformSpec
    #: The newest image the migration gate lets run (the spec's once its migration succeeded).
    target: ImageSpec
    #: The live stable and canary Deployments.
    stable_live: dict[str, Any] | None
    canary_live: dict[str, Any] | None
    #: Problems of the platform's learner-api pods (podstate), to spot a canary that cannot even start.
    problems: tuple[PodProblem, ...] = ()


async def decide(api: KubeApi, memory: Memory, inputs: Inputs, logger: Logger) -> Plan:
    cr, spec = inputs.cr, inputs.spec
    recorded: dict[str, Any] = dict(cr.status.get("rollout") or {})
    command = cr.annotations.get(ROLLOUT_ANNOTATION, "")
    acknowledge = bool(command)
    if command and command not in ROLLOUT_COMMANDS:
        logger.warning("Ignored %s=%s: the values are %s", ROLLOUT_ANNOTATION, command, ", ".join(ROLLOUT_COMMANDS))
        command = ""

    if not spec.rollout.canary:
        memory.forget(cr.uid)
        if not recorded:
            return Plan(None, None, None, None, acknowledge=acknowledge)
        off = {**recorded, "phase": "" if recorded.get("phase") == PROGRESSING else recorded.get("phase", ""),
               "step": 0, "canaryWeight": 0, "stable": _image_status(inputs.target)}
        return Plan(None, None, off, Verdict("True", "RollingUpdate", "spec.rollout.strategy is RollingUpdate: "
                                             "a migrated image goes to every pod at once"), acknowledge=acknowledge)

    target = inputs.target
    stable = (image_of(recorded.get("stable") or {}, spec) or _running_image(inputs.stable_live, spec) or target)
    wanted = reference(target)
    failed = str(recorded.get("failedImage") or "")
    base = {"phase": recorded.get("phase", ""), "image": recorded.get("image", ""), "stable": _image_status(stable),
            "step": 0, "steps": len(spec.rollout.steps), "canaryWeight": 0, "stepStartedAt": "",
            "verdict": recorded.get("verdict", ""), "message": recorded.get("message", ""),
            "canary": recorded.get("canary") or _figures(PodMetrics(), 0),
            "baseline": recorded.get("baseline") or _figures(PodMetrics(), 0), "failedImage": failed}

    if command == "retry" and failed:
        logger.info("%s=retry: %s may be rolled out again", ROLLOUT_ANNOTATION, failed)
        failed = base["failedImage"] = ""

    if wanted == reference(stable):
        memory.forget(cr.uid)
        phase = base["phase"] if base["phase"] != PROGRESSING else ""
        earlier = f"; {failed} was rolled back" if failed else ""
        # the same words as the reconcile that promoted it wrote: nothing to write at the next resync
        verdict = (Verdict("True", "Promoted", base["message"]) if phase == SUCCEEDED and base["image"] == wanted
                   else Verdict("True", "Stable", f"learner-api runs {wanted}{earlier}"))
        return Plan(stable, None, {**base, "phase": phase}, verdict, acknowledge=acknowledge)

    if wanted == failed and command != "promote":
        memory.forget(cr.uid)
        reason = "RolledBack" if base["phase"] == ROLLED_BACK else "RolloutAborted"
        return Plan(stable, None, base, Verdict("False", reason, base["message"]), acknowledge=acknowledge)

    now = _now()
    if command == "promote":
        return _promoted(stable, target, base, f"promoted by {ROLLOUT_ANNOTATION}=promote", logger, acknowledge)

    if base["phase"] != PROGRESSING or base["image"] != wanted:
        step, started = 1, now
        logger.info("Canary rollout of %s started (stable: %s)", wanted, reference(stable))
        memory.forget(cr.uid)
        record = True
    else:
        step = max(1, min(int(recorded.get("step") or 1), len(spec.rollout.steps)))
        started = _parse_stamp(str(recorded.get("stepStartedAt") or "")) or now
        record = False

    if command == "abort":
        return _rolled_back(stable, target, base, step, ABORTED, "Aborted",
                            f"aborted by {ROLLOUT_ANNOTATION}=abort at step {step}", logger, acknowledge)

    canary_name = f"{cr.name}-{learner_api.APP}-canary"  # builders.canary.name, without building a Platform
    if failing := [p for p in inputs.problems if p.pod.startswith(f"{canary_name}-")]:
        return _rolled_back(stable, target, base, step, ROLLED_BACK, "CanaryUnhealthy",
                            f"canary pods cannot run: {failing[0].reason}, {failing[0].describe()}", logger,
                            acknowledge)

    weight = spec.rollout.steps[step - 1].weight
    stable_size = _stable_size(spec, inputs.stable_live)
    replicas = canary_replicas(weight, stable_size)
    plan = CanaryPlan(target, replicas)
    share = round(100 * replicas / (replicas + stable_size))

    canary_metrics, stable_metrics, unreadable = await _measure(api, memory, cr, wanted)
    canary_figures = _figures(total(canary_metrics.values()), len(canary_metrics))
    stable_figures = _figures(total(stable_metrics.values()), len(stable_metrics))
    broken, said = judge(spec, canary_figures, stable_figures)
    if unreadable:
        said += f"; unreadable: {'; '.join(unreadable[:3])}"
    status = {**base, "phase": PROGRESSING, "image": wanted, "step": step, "canaryWeight": share,
              "stepStartedAt": _stamp(started), "canary": canary_figures, "baseline": stable_figures}
    if broken in ("ErrorRatio", "Latency"):
        return _rolled_back(stable, target, status, step, ROLLED_BACK, broken, said, logger, acknowledge)

    interval = duration_seconds(spec.rollout.analysis_interval)
    pause = duration_seconds(spec.rollout.steps[step - 1].pause)
    elapsed = (now - started).total_seconds()
    live = inputs.canary_live or {}
    ready = int((live.get("status") or {}).get("readyReplicas") or 0)
    in_place = bool(live) and ready >= int((live.get("spec") or {}).get("replicas") or 0)
    if not in_place:  # the step's share is not serving yet: its pause runs, but it does not end before
        said += f"; {ready} canary pod(s) ready"
    if broken == "" and elapsed >= pause and in_place:
        if step == len(spec.rollout.steps):
            return _promoted(stable, target, status, f"healthy through {step} step(s): {said}", logger, acknowledge)
        logger.info("Canary of %s healthy at step %d (%s): step %d", wanted, step, said, step + 1)
        step += 1
        weight = spec.rollout.steps[step - 1].weight
        replicas = canary_replicas(weight, stable_size)
        plan = CanaryPlan(target, replicas)
        share = round(100 * replicas / (replicas + stable_size))
        status = {**status, "step": step, "canaryWeight": share, "stepStartedAt": _stamp(now)}
        record, elapsed, pause = True, 0.0, duration_seconds(spec.rollout.steps[step - 1].pause)
    verdict_word = "Waiting" if broken == "Waiting" else "Healthy"
    status = {**status, "verdict": verdict_word,
              "message": f"step {step}/{len(spec.rollout.steps)}: {share}% of pods on {wanted}; {said}"}
    again = max(0.2, min(interval, pause - elapsed) if pause > elapsed else interval)
    return Plan(stable, plan, status, Verdict("False", "CanaryProgressing", status["message"]), again=Later(again),
                acknowledge=acknowledge, record=record)


def _stable_size(spec: LearnerPlatformSpec, live: dict[str, Any] | None) -> int:
    """The stable Deployment's full size: the HPA's choice (its replicas) with autoscaling, else the spec's."""
    if not spec.learner_api.autoscaling.enabled:
        return max(1, spec.learner_api.replicas)
    replicas = ((live or {}).get("spec") or {}).get("replicas")
    return max(1, int(replicas) if isinstance(replicas, int) else spec.learner_api.autoscaling.min_replicas)


async def _measure(
    api: KubeApi, memory: Memory, cr: Snapshot, wanted: str,
) -> tuple[dict[str, PodMetrics], dict[str, PodMetrics], list[str]]:
    """The canary pods' counters since they started, and the stable pods' since this analysis first saw them."""
    selector = f"app.kubernetes.io/name={learner_api.APP},app.kubernetes.io/instance={cr.name}"
    pods, _ = await api.list_objects("v1", "pods", cr.namespace, selector)
    pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    read, unreadable = await memory.scraper.pods(pods)
    is_canary = {str(p["metadata"]["name"]):
                 (p["metadata"].get("labels") or {}).get(canary.TRACK_LABEL) == canary.CANARY for p in pods}
    image, baselines = memory.baselines.get(cr.uid, ("", {}))
    if image != wanted:
        baselines = {}
    canary_metrics: dict[str, PodMetrics] = {}
    stable_metrics: dict[str, PodMetrics] = {}
    for name, metrics in read.items():
        if is_canary.get(name):
            canary_metrics[name] = metrics
        else:
            earlier = baselines.setdefault(name, metrics)
            stable_metrics[name] = metrics.minus(earlier)
    memory.baselines[cr.uid] = (wanted, baselines)
    return canary_metrics, stable_metrics, unreadable


def _promoted(stable: ImageSpec, target: ImageSpec, status: dict[str, Any], why: str, logger: Logger,
              acknowledge: bool) -> Plan:
    wanted = reference(target)
    logger.info("Canary of %s promoted (%s)", wanted, why)
    done = {**status, "phase": SUCCEEDED, "image": wanted, "stable": _image_status(target), "step": 0,
            "canaryWeight": 0, "stepStartedAt": "", "verdict": "Promoted", "failedImage": "",
            "message": f"{wanted} promoted, replacing {reference(stable)}: {why}"}
    return Plan(target, None, done, Verdict("True", "Promoted", done["message"]), acknowledge=acknowledge, record=True)


def _rolled_back(stable: ImageSpec, target: ImageSpec, status: dict[str, Any], step: int, phase: str, reason: str,
                 said: str, logger: Logger, acknowledge: bool) -> Plan:
    wanted = reference(target)
    message = (f"{wanted} rolled back at step {step}: {said}. learner-api stays on {reference(stable)}; set a new "
               f"image tag, or annotate {ROLLOUT_ANNOTATION}=retry to try this one again")
    logger.warning("Canary of %s rolled back (%s): %s", wanted, reason, said)
    done = {**status, "phase": phase, "image": wanted, "step": 0, "canaryWeight": 0, "stepStartedAt": "",
            "verdict": reason, "failedImage": wanted, "message": message}
    condition_reason = "RolloutAborted" if phase == ABORTED else "RolledBack"
    return Plan(stable, None, done, Verdict("False", condition_reason, message), acknowledge=acknowledge, record=True)
