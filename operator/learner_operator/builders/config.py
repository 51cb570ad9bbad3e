"""The ConfigMaps (non-secret settings, the evaluator's alert rules) and the ServiceAccounts."""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml

from learner_operator.builders import common as c

RULES_KEY = "alert-rules.yaml"
RULES_DIR = "/etc/learner-platform/alert-rules"


@cache
def default_alert_rules() -> str:
    return (resources.files("learner_operator.builders") / "default_alert_rules.yaml").read_text()


def alert_rules_yaml(p: c.Platform) -> str:
    """The evaluator's rule file: the spec's rules in the evaluator's own format, or the defaults."""
    rules = p.spec.evaluator.alert_rules
    if not rules:
        return default_alert_rules()
    return yaml.safe_dump({"interval": "15s", "rules": [
        rule.model_dump(by_alias=True, exclude_none=True, mode="json") for rule in rules]}, sort_keys=False)


def alert_rules_config_map(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": c.metadata(p, c.alert_rules_name(p), "evaluator", "alert-rules"),
        "data": {RULES_KEY: alert_rules_yaml(p)},
    }


def config_map(p: c.Platform) -> c.Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": c.metadata(p, c.config_name(p), "learner-platform", "config"),
        "data": c.config_data(p),
    }


def service_account(p: c.Platform, name: str, app: str, component: str) -> c.Manifest:
    """No pod of the platform talks to the Kubernetes API, so no token is mounted."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": c.metadata(p, name, app, component),
        "automountServiceAccountToken": False,
    }
