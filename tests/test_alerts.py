"""The chart's alert rules: valid for promtool, about metrics the project really exports, with runbooks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from learner_api.content_cache import lookups_counter
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.metrics import BusinessMetrics, HttpMetrics
from learner_operator.metrics import Metrics
from tests.conftest import ROOT
from tests.test_chart import CHART, PROMETHEUS_OPERATOR, of_kind, render

PROMQL_FUNCTIONS = {"absent", "sum", "rate", "max", "by", "histogram_quantile", "le"}
#: Series Prometheus itself makes (not exported by us).
PROMETHEUS_OWN = {"up"}


def rules() -> list[dict[str, Any]]:
    docs = render(CHART / "values-prod.yaml", extra=PROMETHEUS_OPERATOR)  # a cluster with the Prometheus Operator
    [rule] = of_kind(docs, "PrometheusRule")
    return list(rule["spec"]["groups"])


def exported() -> set[str]:
    """Every series name the operator, learner-api and the evaluator expose (histograms as _bucket/_sum/_count)."""
    metrics, api, evaluator = Metrics(), HttpMetrics(CollectorRegistry()), EvaluatorMetrics()
    business = CollectorRegistry()
    BusinessMetrics(business)
    lookups_counter(business)
    evaluator.alerts_firing.labels("X").set(0)
    metrics.watch_conditions(lambda: [("ns", "name", [{"type": "Ready", "status": "True"}])])
    api.requests.labels("GET", "/livez", "2xx").inc()
    api.latency.labels("GET", "/livez").observe(0.01)
    metrics.reconciles.labels("ok").inc()
    metrics.api_requests.labels("PATCH").inc()
    names = set()
    for registry in (metrics.registry, api.registry, evaluator.registry, business):
        for family in registry.collect():
            names |= {sample.name for sample in family.samples}
    return names


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "scripts/test installs promtool (Debian package prometheus)"
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump({"groups": rules()}))
    result = subprocess.run([promtool, "check", "rules", str(file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers left once label matchers, grouping clauses and
    range selectors are removed, that are not functions (our metric names all contain '_'; `up` is
    Prometheus' own)."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    names = {name for name in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", bare)
             if "_" in name or name in PROMETHEUS_OWN}
    return names - PROMQL_FUNCTIONS


def test_every_rule_queries_metrics_the_project_exports() -> None:
    known = exported()
    assert "learner_operator_platform_condition" in known
    for group in rules():
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, rule["alert"]
            assert names <= known | PROMETHEUS_OWN, (rule["alert"], names - known)


def test_every_alert_has_a_runbook_section() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {line.removeprefix("## ").strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    for group in rules():
        for rule in group["rules"]:
            assert rule["annotations"]["runbook_url"].endswith(f"#{rule['alert'].lower()}")
            assert rule["alert"].lower() in anchors
            assert rule["labels"]["severity"] in ("warning", "critical")


def test_the_dashboard_parses_and_queries_only_exported_metrics() -> None:
    docs = render(CHART / "values-prod.yaml", extra=PROMETHEUS_OPERATOR)  # a cluster with the Prometheus Operator
    [config] = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-dashboard")]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["learner-platform.json"])
    known = exported()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 8
    for expr in exprs:
        names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{|\[|\))", expr)) - PROMQL_FUNCTIONS
        names = {name for name in names if "_" in name}  # metric names; label names never end a selector here
        assert names, expr
        assert names <= known, (expr, names - known)
