"""Status conditions from what a reconcile observed (pure: no client, no kopf).

Conditions follow metav1.Condition: CamelCase reasons, a message a person can act on, and a
``lastTransitionTime`` that moves only when the condition's ``status`` moves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from learner_operator.models import CONDITION_TYPES


class Verdict(NamedTuple):
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class PodProblem:
    """Why one pod does not run: what `kubectl describe pod` would show first."""

    pod: str
    reason: str  # CrashLoopBackOff, OOMKilled, ImagePullBackOff, ErrImagePull, Unschedulable, InitContainerFailed...
    container: str = ""
    message: str = ""

    def describe(self) -> str:
        where = f"pod {self.pod}" + (f", container {self.container}" if self.container else "")
        return f"{where}: {self.message}" if self.message else where


#: A container stuck in one of these waiting reasons will not start without a fix.
_STUCK_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                  "CreateContainerError", "InvalidImageName", "RunContainerError"}
_MESSAGE_LIMIT = 400


def _short(text: Any) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 1] + "…"


def _container_problem(pod: str, status: dict[str, Any], init: bool) -> PodProblem | None:
    name = str(status.get("name") or "")
    state, last = status.get("state") or {}, status.get("lastState") or {}
    waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
    last_terminated = last.get("terminated") or {}
    said = last_terminated.get("message") or terminated.get("message")  # the termination message, if any
    reason = str(waiting.get("reason") or "")
    if "OOMKilled" in (last_terminated.get("reason"), terminated.get("reason")):
        return PodProblem(pod, "OOMKilled", name, _short(
            f"killed for using more memory than its limit ({status.get('restartCount', 0)} restarts); "
            "raise resources.limits.memory"))
    if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        return PodProblem(pod, reason, name, _short(f"image {status.get('image', '')}: {waiting.get('message', '')}"))
    if reason in _STUCK_WAITING:
        detail = said or waiting.get("message") or (
            f"exit code {last_terminated['exitCode']}" if "exitCode" in last_terminated else "")
        return PodProblem(pod, "InitContainerFailed" if init and reason == "CrashLoopBackOff" else reason, name,
                          _short(detail))
    if init and terminated and terminated.get("exitCode", 0) != 0:
        return PodProblem(pod, "InitContainerFailed", name,
                          _short(said or f"exit code {terminated.get('exitCode')}"))
    return None


def pod_problem(pod: dict[str, Any]) -> PodProblem | None:
    """The first thing keeping this pod from serving that a person has to fix; None if there is none yet."""
    name = str((pod.get("metadata") or {}).get("name") or "")
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return PodProblem(name, "Unschedulable", "", _short(condition.get("message")))
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for container in status.get(key) or []:
            if (problem := _container_problem(name, container, init)) is not None:
                return problem
    if status.get("phase") == "Failed":
        return PodProblem(name, str(status.get("reason") or "PodFailed"), "", _short(status.get("message")))
    return None


@dataclasses.dataclass(frozen=True)
class Workload:
    """A Deployment as the status needs it."""

    exists: bool = False
    desired: int = 0
    ready: int = 0
    available: bool = False
    rolling_out: bool = False
    stalled: str = ""  # the Deployment's own message when its progress deadline passed
    image: str = ""
    #: The ReplicaSet controller cannot create pods (admission, quota): the Deployment's ReplicaFailure.
    replica_failure: str = ""
    #: What keeps its pods from running (from the pods themselves).
    problems: tuple[PodProblem, ...] = ()


def observe_deployment(live: dict[str, Any] | None) -> Workload:
    if live is None:
        return Workload()
    spec, status = live.get("spec") or {}, live.get("status") or {}
    desired = int(spec.get("replicas", status.get("replicas", 0)) or 0)
    generation = int((live.get("metadata") or {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    ready, updated = int(status.get("readyReplicas") or 0), int(status.get("updatedReplicas") or 0)
    available_replicas, total = int(status.get("availableReplicas") or 0), int(status.get("replicas") or 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    stalled = progressing.get("reason") == "ProgressDeadlineExceeded"
    failure = conditions.get("ReplicaFailure") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    available_condition = conditions.get("Available")
    if desired == 0:
        available = True
    elif available_condition is not None:
        available = available_condition.get("status") == "True" and available_replicas > 0
    else:
        available = available_replicas >= desired
    return Workload(
        exists=True,
        desired=desired,
        ready=ready,
        available=available,
        rolling_out=observed < generation or updated < desired or total > updated or available_replicas < updated,
        stalled=str(progressing.get("message") or "progress deadline exceeded") if stalled else "",
        image=str(containers[0].get("image") or ""),
        replica_failure=_short(failure.get("message") or failure.get("reason")) if failure.get("status") == "True"
        else "",
    )


@dataclasses.dataclass(frozen=True)
class Observation:
    generation: int
    invalid_spec: str = ""
    paused: bool = False
    secret: Verdict | None = None  # None: not checked (invalid spec or paused)
    apply_errors: tuple[str, ...] = ()
    api: Workload = Workload()
    evaluator: Workload | None = None  # None: the evaluator is switched off
    unserved: tuple[str, ...] = ()  # optional kinds the spec asks for that the cluster does not serve
    migration: Verdict | None = None  # the Migrated condition; None: not judged (the Secret is not usable)
    rollout: Verdict | None = None  # the RolledOut condition (canary rollouts); None: left as it is


def pods_failing(name: str, problems: tuple[PodProblem, ...]) -> Verdict | None:
    """The most common problem among the pods, with one of them as the example; None when there is none."""
    if not problems:
        return None
    reasons = [p.reason for p in problems]
    reason = max(dict.fromkeys(reasons), key=reasons.count)
    example = next(p for p in problems if p.reason == reason)
    count = reasons.count(reason)
    return Verdict("False", reason, f"{count} {name} pod{'s' * (count > 1)} {reason}: {example.describe()}")


def _workload(name: str, w: Workload, deployment: str) -> Verdict:
    if not w.exists:
        return Verdict("False", "DeploymentMissing", f"the {name} Deployment {deployment} does not exist yet")
    if w.available:
        return Verdict("True", "MinimumReplicasAvailable", f"{w.ready}/{w.desired} {name} pods ready")
    if w.replica_failure:
        return Verdict("False", "FailedCreate", f"no {name} pod can be created: {w.replica_failure}")
    if (failing := pods_failing(name, w.problems)) is not None:
        return Verdict("False", failing.reason, f"{w.ready}/{w.desired} ready; {failing.message}")
    return Verdict("False", "MinimumReplicasUnavailable",
                   f"{w.ready}/{w.desired} {name} pods ready; see `kubectl describe deployment {deployment}`")


def verdicts(obs: Observation, api_deployment: str, evaluator_deployment: str) -> dict[str, Verdict]:
    """What each condition should say now. Conditions that cannot be judged are left out (kept as they were)."""
    if obs.invalid_spec:
        message = f"the spec cannot be served: {obs.invalid_spec}"
        return {"Ready": Verdict("False", "InvalidSpec", message), "Degraded": Verdict("True", "InvalidSpec", message),
                "Progressing": Verdict("False", "InvalidSpec", "nothing is applied until the spec is fixed")}
    if obs.paused:
        message = "spec.paused is true: the operator changes nothing until it is set back to false"
        return {"Ready": Verdict("False", "Paused", message), "Progressing": Verdict("False", "Paused", message)}

    out: dict[str, Verdict] = {}
    secret = obs.secret or Verdict("Unknown", "NotChecked", "")
    out["SecretReady"] = secret
    out["LearnerApiAvailable"] = _workload("learner-api", obs.api, api_deployment)
    if obs.evaluator is None:
        out["EvaluatorAvailable"] = Verdict("True", "Disabled", "spec.evaluator.enabled is false")
    else:
        out["EvaluatorAvailable"] = _workload("evaluator", obs.evaluator, evaluator_deployment)

    workloads = [obs.api] + ([obs.evaluator] if obs.evaluator is not None else [])
    serving = False  # a Degraded=True that does not stop the platform from serving
    serving_but_failing = [(w, name) for w, name in ((obs.api, "learner-api"), (obs.evaluator, "evaluator"))
                           if w is not None and w.available and w.problems]
    stalled = [w.stalled for w in workloads if w.stalled]
    rolling = any(w.rolling_out for w in workloads)
    migration = obs.migration
    if migration is not None:
        out["Migrated"] = migration
    if obs.rollout is not None:
        out["RolledOut"] = obs.rollout
    rolled_back = obs.rollout is not None and obs.rollout.reason in ("RolledBack", "RolloutAborted")
    canary = obs.rollout is not None and obs.rollout.reason == "CanaryProgressing"
    migrating = migration is not None and migration.reason == "MigrationRunning"
    failed = migration is not None and migration.reason == "MigrationFailed"
    if obs.apply_errors:
        degraded = Verdict("True", "ApplyFailed", "; ".join(obs.apply_errors))
    elif secret.status != "True":
        degraded = Verdict("True", secret.reason, secret.message)
    elif stalled:
        degraded = Verdict("True", "ProgressDeadlineExceeded", "; ".join(stalled))
    elif failed and migration is not None:  # the last migrated image keeps serving: Ready stays as its pods are
        degraded, serving = Verdict("True", "MigrationFailed", migration.message), True
    elif rolled_back and obs.rollout is not None:  # the stable image keeps serving, as after a failed migration
        degraded, serving = Verdict("True", obs.rollout.reason, obs.rollout.message), True
    elif failing := [v for w, name in serving_but_failing for v in [pods_failing(name, w.problems)] if v]:
        # some pods fail while others serve (often a rollout's new pods): Ready stays True
        degraded, serving = Verdict("True", failing[0].reason, "; ".join(v.message for v in failing)), True
    elif obs.unserved:  # serving all the same: Ready below does not turn False for it
        degraded, serving = Verdict("True", "ApiUnavailable", "; ".join(obs.unserved)), True
    else:
        degraded = Verdict("False", "AsExpected", "")
    out["Degraded"] = degraded
    out["Progressing"] = (
        Verdict("False", secret.reason, "nothing is rolled out until the Secret is usable") if secret.status != "True"
        else Verdict("False", "ProgressDeadlineExceeded", "; ".join(stalled)) if stalled
        else Verdict("True", "MigrationRunning", migration.message) if migrating and migration is not None
        else Verdict("False", "MigrationFailed", migration.message) if failed and migration is not None
        else Verdict("True", "CanaryProgressing", obs.rollout.message) if canary and obs.rollout is not None
        else Verdict("True", "RolloutInProgress", "new pods are being rolled out") if rolling
        else Verdict("False", "RolloutComplete", "all pods run the desired template")
    )

    if degraded.status == "True" and not serving:
        ready = Verdict("False", degraded.reason, degraded.message)
    elif failed and out["LearnerApiAvailable"].status != "True":
        ready = Verdict("False", "MigrationFailed", degraded.message)  # nothing serves: the likely reason why
    elif out["LearnerApiAvailable"].status != "True":
        ready = out["LearnerApiAvailable"]
    elif out["EvaluatorAvailable"].status != "True":
        ready = out["EvaluatorAvailable"]
    elif rolling:
        ready = Verdict("False", "RolloutInProgress", "new pods are being rolled out")
    else:
        ready = Verdict("True", "AllComponentsReady", "learner-api and evaluator are available")
    out["Ready"] = ready
    return out


def merge_conditions(
    old: list[dict[str, Any]], new: dict[str, Verdict], generation: int, now: str,
) -> list[dict[str, Any]]:
    """New conditions in a stable order; ``lastTransitionTime`` kept unless ``status`` changed."""
    by_type = {c.get("type"): c for c in old}
    merged: list[dict[str, Any]] = []
    for kind in CONDITION_TYPES:
        previous = by_type.get(kind)
        verdict = new.get(kind)
        if verdict is None:
            if previous is not None:
                merged.append(previous)
            continue
        moved = previous is None or previous.get("status") != verdict.status
        merged.append({
            "type": kind,
            "status": verdict.status,
            "observedGeneration": generation,
            "lastTransitionTime": now if moved or previous is None else previous.get("lastTransitionTime", now),
            "reason": verdict.reason,
            "message": verdict.message,
        })
    return merged


def workload_status(w: Workload | None) -> dict[str, Any]:
    if w is None:
        return {"replicas": 0, "readyReplicas": 0, "ready": "0/0", "image": ""}
    return {"replicas": w.desired, "readyReplicas": w.ready, "ready": f"{w.ready}/{w.desired}", "image": w.image}
