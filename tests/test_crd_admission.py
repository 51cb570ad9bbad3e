"""The CRD as the API server judges it: the CRD itself, and partial specs that rely on its defaults."""

from __future__ import annotations

import copy
from typing import Any

import kmock
import pytest
import yaml

from learner_operator.models import InvalidSpec, parse_object, parse_spec
from tests.conftest import EXAMPLES, load
from tests.operator_harness import NS, AnyCluster


def _with_rule_and_empty_default() -> dict[str, Any]:
    """The shape of the first CRD a real server refused: `default: {}` on an object whose rule reads a key."""
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"autoscaling": {
        "type": "object", "default": {},
        "properties": {"minReplicas": {"type": "integer", "default": 2}, "maxReplicas": {"type": "integer",
                                                                                         "default": 10}},
        "x-kubernetes-validations": [{"rule": "self.minReplicas <= self.maxReplicas",
                                      "message": "autoscaling.minReplicas must be <= autoscaling.maxReplicas"}],
    }}}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.dev"},
            "spec": {"group": "example.dev", "scope": "Namespaced",
                     "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}


def test_a_default_is_checked_against_its_rules_as_written(cluster: AnyCluster) -> None:
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.create_crd(_with_rule_and_empty_default())
    assert "no such key: minReplicas evaluating rule: autoscaling.minReplicas must be <=" in str(refused.value)


def test_a_complete_default_is_accepted(cluster: AnyCluster) -> None:
    crd = _with_rule_and_empty_default()
    autoscaling = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "autoscaling"]
    autoscaling["default"] = {"minReplicas": 2, "maxReplicas": 10}
    cluster.create_crd(crd)


def test_the_committed_crd_is_accepted(cluster: AnyCluster, crd: dict[str, Any]) -> None:
    """The cluster fixture creates it already; creating it again (an upgrade) passes the same checks."""
    cluster.create_crd(copy.deepcopy(crd))


@pytest.mark.parametrize("learner_api", [
    {"replicas": 3, "autoscaling": {"enabled": False}},
    {"podDisruptionBudget": {"minAvailable": 1}},
    {"autoscaling": {"maxReplicas": 4}},
    {"resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}},
], ids=["no-hpa", "pdb-only", "max-only", "resources-only"])
def test_partial_objects_are_completed_by_defaults_before_their_rules_run(
    cluster: AnyCluster, learner_api: dict[str, Any],
) -> None:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["spec"]["learnerApi"] = learner_api
    stored = cluster.put(doc)
    parse_spec(stored["spec"])
    assert cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, doc["metadata"]["name"]) is not None


def test_observability_without_pushgateway_is_admitted(cluster: AnyCluster) -> None:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["spec"]["observability"] = {"serviceMonitor": False}
    stored = cluster.put(doc)
    assert stored["spec"]["observability"]["pushgateway"]["enabled"] is False


@pytest.mark.parametrize(("rollout", "complaint"), [
    ({"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 10}]}, "must be above the previous"),
    ({"strategy": "Canary", "steps": [{"weight": 20}, {"weight": 20}]}, "must be above the previous"),
    ({"strategy": "Canary", "steps": []}, "a Canary rollout needs at least one step"),
    ({"strategy": "Canary", "steps": [{"weight": 100}]}, "weight"),
    ({"strategy": "Canary", "steps": [{"weight": 10, "pause": "two minutes"}]}, "pause"),
    ({"strategy": "Canary", "slo": {"maxErrorRatio": 2}}, "maxErrorRatio"),
], ids=["decreasing", "repeated", "no-steps", "weight-100", "bad-pause", "ratio-above-1"])
def test_a_bad_rollout_is_refused_at_admission_with_the_reason(
    cluster: AnyCluster, rollout: dict[str, Any], complaint: str,
) -> None:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["spec"]["rollout"] = rollout
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.put(doc)
    assert complaint in str(refused.value)
    with pytest.raises(ValueError, match=complaint):  # the operator's own check says the same
        parse_spec(doc["spec"])


def test_a_canary_rollout_is_completed_by_defaults(cluster: AnyCluster) -> None:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["spec"]["rollout"] = {"strategy": "Canary", "steps": [{"weight": 25}]}
    stored = cluster.put(doc)
    assert stored["spec"]["rollout"]["steps"] == [{"weight": 25, "pause": "2m"}]
    assert stored["spec"]["rollout"]["slo"]["minRequests"] == 100
    assert parse_spec(stored["spec"]).rollout.canary


def _with_alert_rules(rules: list[dict[str, Any]]) -> dict[str, Any]:
    doc = load(EXAMPLES / "01-minimal.yaml")
    doc["spec"]["evaluator"] = {"alertRules": rules}
    return doc


@pytest.mark.parametrize(("field", "names", "complaint"), [
    ("labels", {"team-name": "learning"}, "alert rule label names must be Prometheus label names"),
    ("labels", {"9lives": "x"}, "alert rule label names must be Prometheus label names"),
    ("labels", {"__name__": "x"}, "not starting with __"),
    ("labels", {"a" * 64: "x"}, "of at most 63 characters"),
    ("labels", {"tenant": "t1"}, "must not set alertname or tenant"),
    ("labels", {"alertname": "Other"}, "must not set alertname or tenant"),
    ("annotations", {"runbook-url": "https://runbooks/x"}, "alert rule annotation names must match"),
], ids=["hyphen", "digit-first", "reserved-prefix", "too-long", "tenant", "alertname", "annotation-hyphen"])
def test_alert_rule_label_names_the_evaluator_would_refuse_are_refused_at_admission(
    cluster: AnyCluster, field: str, names: dict[str, str], complaint: str,
) -> None:
    """Not later by the evaluator (its pods crash-looping on the rule file) or by Prometheus/Alertmanager."""
    doc = _with_alert_rules([{"alert": "Lag", "signal": "dead_letters", "above": 0, field: names}])
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.put(doc)
    assert complaint in str(refused.value)
    with pytest.raises(InvalidSpec, match=complaint):  # render says the same
        parse_object(doc)


def test_good_alert_rule_label_names_are_admitted(cluster: AnyCluster) -> None:
    labels = {"severity": "page", "_team": "learning", "Team2": "x", "a" * 63: "y"}
    stored = cluster.put(_with_alert_rules([{"alert": "Lag", "signal": "dead_letters", "above": 0, "labels": labels,
                                             "annotations": {"runbook_url": "https://runbooks/lag"}}]))
    assert parse_spec(stored["spec"]).evaluator.alert_rules[0].labels == labels


def test_alert_rules_too_big_for_their_config_map_are_refused_at_admission(cluster: AnyCluster) -> None:
    """A ConfigMap holds at most 1 MiB: rules that would not fit are refused by `kubectl apply`, instead of
    failing every reconcile with the API server's error."""
    rules = [{"alert": f"Rule{i}", "signal": "dead_letters", "above": i, "annotations": {"description": "x" * 20_000}}
             for i in range(60)]
    assert len(yaml.safe_dump({"rules": rules}).encode()) > 2**20  # what the ConfigMap would have to hold
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.put(_with_alert_rules(rules))
    assert "must have at most 50 items" in str(refused.value)
    with pytest.raises(InvalidSpec, match="at most 50 items"):
        parse_object(_with_alert_rules(rules))
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.put(_with_alert_rules(rules[:50]))
    assert "Too long: may not be more than 200" in str(refused.value)
