"""The pure parts of a reconcile: when to write a child, and what the conditions say."""

from __future__ import annotations

import copy
from typing import Any

from learner_operator import drift
from learner_operator.status import Observation, Verdict, Workload, merge_conditions, observe_deployment, verdicts

DESIRED = drift.with_digest({
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "x", "namespace": "n", "labels": {"a": "b"}},
    "spec": {"template": {"spec": {"containers": [{
        "name": "c", "image": "i:1", "ports": [{"name": "http", "containerPort": 8000}],
        "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}}]}}},
})


def live(**changes: Any) -> dict[str, Any]:
    """DESIRED as a real API server returns it: defaults added, quantities normalised."""
    obj = copy.deepcopy(DESIRED)
    obj["metadata"].update(uid="u", resourceVersion="7", generation=3, managedFields=[{"manager": "m"}])
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    container["ports"][0]["protocol"] = "TCP"
    container["resources"]["requests"]["cpu"] = "500m"
    obj["spec"].update(replicas=2, progressDeadlineSeconds=600)
    obj["status"] = {"readyReplicas": 2}
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value
    return obj


def owned(fields: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": drift.FIELD_MANAGER, "operation": "Apply", "fieldsV1": fields}]


OURS = {"f:spec": {"f:template": {"f:spec": {"f:containers": {'k:{"name":"c"}': {".": {}, "f:image": {}}}}}}}


def test_after_our_apply_only_our_fields_changing_hands_is_drift() -> None:
    """Values are never compared with the manifest: the server may rewrite them as it likes."""
    applied = live(metadata__managedFields=owned(OURS))
    fingerprint = drift.ownership(applied)
    normalised = live(metadata__managedFields=owned(OURS), spec__template__spec__containers__0__image="i:1")
    normalised["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "500m"}}
    assert not drift.needs_apply(DESIRED, normalised, fingerprint)
    taken = copy.deepcopy(OURS)
    del taken["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"c"}']["f:image"]
    assert drift.needs_apply(DESIRED, live(metadata__managedFields=owned(taken)), fingerprint)
    assert drift.needs_apply(DESIRED, live(metadata__managedFields=[]), fingerprint)


def test_without_an_apply_of_our_own_a_lenient_comparison_decides() -> None:
    assert not drift.needs_apply(DESIRED, live(), None)
    assert drift.needs_apply(DESIRED, live(spec__template__spec__containers__0__image="evil"), None)
    assert drift.needs_apply(DESIRED, live(metadata__labels={"a": "changed"}), None)
    assert not drift.needs_apply(DESIRED, live(spec__replicas=9), None)  # the HPA's field


def test_the_lenient_comparison_knows_what_the_server_drops_and_merges() -> None:
    want = {"spec": {"egress": [], "podSelector": {}, "containers": [{"name": "c", "env": [{"name": "A"}]}]}}
    have = {"spec": {"podSelector": {}, "containers": [{"name": "c", "env": [{"name": "X"}, {"name": "A"}]},
                                                       {"name": "sidecar"}]}}
    assert drift.contains(want, have)
    assert not drift.contains(want, {"spec": {"podSelector": {}, "containers": [{"name": "c", "env": []}]}})
    assert not drift.contains({"args": ["a", "b"]}, {"args": ["a", "b", "c"]})


def test_our_own_change_is_seen_through_the_digest_even_when_it_only_removes_a_field() -> None:
    smaller = copy.deepcopy(DESIRED)
    del smaller["metadata"]["annotations"]
    del smaller["metadata"]["labels"]
    smaller = drift.with_digest(smaller)
    assert drift.contains({k: v for k, v in smaller.items() if k != "metadata"}, live())
    assert drift.needs_apply(smaller, live(), drift.ownership(live()))


def test_missing_child_needs_apply() -> None:
    assert drift.needs_apply(DESIRED, None, None)
    assert drift.needs_apply(DESIRED, None, "abc")


def ready_deployment(**status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": 2}, "spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"image": "i:2"}]}}}, "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                                         "readyReplicas": 2, "availableReplicas": 2,
                                         "conditions": [{"type": "Available", "status": "True"}], **status}}


def test_a_rollout_in_progress_is_not_ready_yet() -> None:
    rolling = observe_deployment(ready_deployment(observedGeneration=1))
    assert rolling.rolling_out
    ok = Verdict("True", "SecretFound", "")
    out = verdicts(Observation(2, secret=ok, api=rolling, evaluator=None), "api", "ev")
    assert (out["Ready"].status, out["Ready"].reason) == ("False", "RolloutInProgress")
    assert (out["Progressing"].status, out["Progressing"].reason) == ("True", "RolloutInProgress")
    done = verdicts(Observation(2, secret=ok, api=observe_deployment(ready_deployment()), evaluator=None), "a", "e")
    assert (done["Ready"].status, done["Ready"].reason) == ("True", "AllComponentsReady")
    assert done["EvaluatorAvailable"].reason == "Disabled"


def test_a_stalled_rollout_is_degraded_with_the_deployments_own_words() -> None:
    stalled = observe_deployment(ready_deployment(conditions=[
        {"type": "Available", "status": "True"},
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "api-7f" has timed out progressing.'}]))
    out = verdicts(Observation(2, secret=Verdict("True", "SecretFound", ""), api=stalled, evaluator=None), "a", "e")
    message = 'ReplicaSet "api-7f" has timed out progressing.'
    assert out["Degraded"] == Verdict("True", "ProgressDeadlineExceeded", message)
    assert out["Ready"].status == "False"


def test_last_transition_time_moves_only_with_status() -> None:
    first = merge_conditions([], {"Ready": Verdict("False", "MinimumReplicasUnavailable", "0/2")}, 1, "T1")
    same_status = merge_conditions(first, {"Ready": Verdict("False", "SecretNotFound", "other")}, 2, "T2")
    assert same_status[0]["lastTransitionTime"] == "T1"
    assert (same_status[0]["reason"], same_status[0]["observedGeneration"]) == ("SecretNotFound", 2)
    flipped = merge_conditions(same_status, {"Ready": Verdict("True", "AllComponentsReady", "")}, 2, "T3")
    assert flipped[0]["lastTransitionTime"] == "T3"


def test_conditions_not_judged_are_kept_as_they_were() -> None:
    before = merge_conditions([], {"SecretReady": Verdict("True", "SecretFound", ""),
                                   "Ready": Verdict("True", "AllComponentsReady", "")}, 1, "T1")
    paused = merge_conditions(before, verdicts(Observation(2, paused=True), "a", "e"), 2, "T2")
    by_type = {c["type"]: c for c in paused}
    assert by_type["SecretReady"] == {c["type"]: c for c in before}["SecretReady"]
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "Paused")


def test_workload_with_no_deployment_yet() -> None:
    assert observe_deployment(None) == Workload()
