"""Alert rules from a YAML file: what to watch, when it counts as a problem, and what to say.

    interval: 15s
    rules:
      - alert: EvaluatorIngestLagHigh
        signal: ingest_lag_seconds      # one of SIGNALS
        above: 120                      # or `below:`
        for: 5m                         # pending this long before firing
        labels: {severity: warning}
        annotations: {summary: "Progress is {{ $value }}s behind"}

Signals are fixed, named measurements of platform state (no free-form queries: the file comes from a
ConfigMap, and arbitrary SQL from there would be a hole). Per-tenant signals give one alert per tenant,
labelled ``tenant``. A bad file is refused at start with its line and the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: signal -> whether it is measured per tenant
SIGNALS: dict[str, bool] = {
    "ingest_lag_seconds": False,
    "pending_entries": False,
    "stream_lag_entries": False,
    "dead_letters": False,
    "seconds_since_progress": True,
    "failed_purchases_1h": True,
    "unfulfilled_purchases": True,
}
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class RuleFileError(ValueError):
    pass


def parse_duration(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h30m")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    alert: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    signal: str
    above: float | None = None
    below: float | None = None
    for_: float = Field(default=0.0, alias="for")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        if value not in SIGNALS:
            raise ValueError(f"unknown signal {value!r}; one of {', '.join(SIGNALS)}")
        return value

    @field_validator("for_", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value
               if not _LABEL.match(name) or name.startswith("__") or name in ("alertname", "tenant")]
        if bad:
            raise ValueError(f"label names {bad} are not allowed (Prometheus label names, not starting with __; "
                             "alertname and tenant are set by the evaluator)")
        return value

    @model_validator(mode="after")
    def _one_threshold(self) -> Rule:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of `above` or `below`")
        return self

    def active(self, value: float) -> bool:
        return value > self.above if self.above is not None else value < (self.below or 0.0)


@dataclass(frozen=True)
class RuleFile:
    rules: list[Rule]
    interval: float = 15.0
    source: str = "<defaults>"
    names: list[str] = field(default_factory=list)


def load(path: Path | None) -> RuleFile:
    """Read and check a rule file (None: the defaults shipped with the evaluator)."""
    if path is None:
        from importlib import resources

        text = (resources.files("learner_api.evaluator") / "default_rules.yaml").read_text()
        return loads(text, "<defaults>")
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuleFileError(f"{path}: cannot read the alert rules: {exc.strerror}") from None
    return loads(text, str(path))


def loads(text: str, source: str) -> RuleFile:
    try:
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise RuleFileError(f"{source}:{line}: not valid YAML: {exc.problem}") from None
    if not isinstance(root, yaml.MappingNode):
        raise RuleFileError(f"{source}:1: expected a mapping with `rules:` (and optionally `interval:`)")
    data = yaml.safe_load(text)
    unknown = set(data) - {"rules", "interval"}
    if unknown:
        raise RuleFileError(f"{source}:1: unknown keys {sorted(unknown)}; expected `rules` and `interval`")
    rules_node = next((value for key, value in root.value if key.value == "rules"), None)
    if not isinstance(rules_node, yaml.SequenceNode) or not isinstance(data.get("rules"), list):
        raise RuleFileError(f"{source}:1: `rules` must be a list of rules")
    try:
        interval = parse_duration(data.get("interval", "15s"))
    except ValueError as exc:
        raise RuleFileError(f"{source}: interval: {exc}") from None
    rules: list[Rule] = []
    for node, raw in zip(rules_node.value, data["rules"], strict=True):
        line = node.start_mark.line + 1
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "rule"
            name = raw.get("alert", "?") if isinstance(raw, dict) else "?"
            raise RuleFileError(f"{source}:{line}: rule {name}: {where}: "
                                f"{str(error['msg']).removeprefix('Value error, ')}") from None
        if any(existing.alert == rule.alert for existing in rules):
            raise RuleFileError(f"{source}:{line}: rule {rule.alert}: defined twice")
        rules.append(rule)
    return RuleFile(rules, interval, source, [rule.alert for rule in rules])
