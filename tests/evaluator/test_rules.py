"""Alert rule files and the pending -> firing -> resolved states (timing by explicit clocks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from learner_api.evaluator.alerting import AlertEngine
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.evaluator.rules import RuleFileError, load, loads

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_default_rules_load() -> None:
    rules = load(None)
    assert {"ProgressIngestLagHigh", "ProgressDeadLetters"} <= set(rules.names)


@pytest.mark.parametrize(("text", "message"), [
    ("rules:\n  - alert: A\n    signal: dead_letters\n    above: 0\n  - alert: B\n    signal: nope\n    above: 1\n",
     "<test>:5: rule B: signal: unknown signal 'nope'"),
    ("rules:\n  - alert: A\n    signal: dead_letters\n", "<test>:2: rule A: rule: give exactly one of"),
    ("rules:\n  - alert: A\n    signal: dead_letters\n    above: 0\n    for: 5 minutes\n",
     "<test>:2: rule A: for: '5 minutes' is not a duration"),
    ("rules:\n  - alert: A\n    signal: dead_letters\n    above: 0\n    labels: {tenant: x}\n",
     "alertname and tenant are set by the evaluator"),
    ("rules:\n  - alert: A\n    signal: dead_letters\n    above: 0\n    labels: {__name__: x}\n",
     "not starting with __"),
    ("rules:\n  - alert: A\n    signal: dead_letters\n    above: 0\n    sevrity: page\n", "<test>:2: rule A: sevrity"),
    ("rules: [\n", "<test>:2: not valid YAML"),
    ("rule:\n  - alert: A\n", "unknown keys ['rule']"),
])
def test_a_bad_rule_file_is_refused_with_line_and_reason(text: str, message: str) -> None:
    with pytest.raises(RuleFileError) as refused:
        loads(text, "<test>")
    assert message in str(refused.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match="cannot read the alert rules"):
        load(tmp_path / "absent.yaml")


def test_pending_then_firing_then_resolved_per_tenant() -> None:
    rules = loads("rules:\n  - alert: Quiet\n    signal: seconds_since_progress\n    above: 600\n    for: 5m\n"
                  "    labels: {severity: warning}\n"
                  "    annotations: {summary: '{{ $labels.tenant }} quiet {{ $value }}s'}\n",
                  "<test>")
    metrics = EvaluatorMetrics()
    engine = AlertEngine(rules, metrics)
    assert engine.evaluate({"seconds_since_progress": {"acme": 700.0, "globex": 10.0}}, T0) == []
    [alert] = engine.alerts.values()
    assert (alert.state, alert.labels) == ("pending", {"alertname": "Quiet", "severity": "warning", "tenant": "acme"})
    assert engine.evaluate({"seconds_since_progress": {"acme": 900.0}}, T0 + timedelta(minutes=4)) == []
    firing = engine.evaluate({"seconds_since_progress": {"acme": 1000.0}}, T0 + timedelta(minutes=5))
    assert [a.state for a in firing] == ["firing"]
    assert firing[0].payload(60, "gen")["annotations"] == {"summary": "acme quiet 1000s"}
    assert metrics.alerts_firing.labels("Quiet")._value.get() == 1
    # not measurable (PostgreSQL down): neither resolved nor forgotten
    assert [a.state for a in engine.evaluate({}, T0 + timedelta(minutes=6))] == []
    assert metrics.alerts_firing.labels("Quiet")._value.get() == 1
    resolved = engine.evaluate({"seconds_since_progress": {"acme": 5.0}}, T0 + timedelta(minutes=7))
    assert [(a.state, a.payload(60, "gen")["endsAt"]) for a in resolved] == [
        ("resolved", (T0 + timedelta(minutes=7)).isoformat())]
    assert metrics.alerts_firing.labels("Quiet")._value.get() == 0
    assert engine.alerts == {}


def test_a_pending_alert_that_clears_never_fires() -> None:
    engine = AlertEngine(loads("rules:\n  - alert: Lag\n    signal: ingest_lag_seconds\n    above: 60\n"
                               "    for: 1m\n", "<test>"), EvaluatorMetrics())
    engine.evaluate({"ingest_lag_seconds": 120.0}, T0)
    assert engine.evaluate({"ingest_lag_seconds": 0.0}, T0 + timedelta(seconds=30)) == []
    assert engine.evaluate({"ingest_lag_seconds": 120.0}, T0 + timedelta(seconds=70)) == []  # pending anew
