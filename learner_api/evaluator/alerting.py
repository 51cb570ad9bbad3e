"""Alert states like Prometheus: inactive -> pending (condition true) -> firing (true for `for`) ->
resolved (false again), and delivery to Alertmanager's API v2.

Firing alerts are re-sent every evaluation with ``endsAt`` a few intervals ahead, so Alertmanager
resolves them by itself if this evaluator disappears; a resolved alert is sent once with ``endsAt`` now.
Several evaluator replicas send the same alerts: Alertmanager deduplicates them by labels.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.evaluator.rules import Rule, RuleFile

logger = logging.getLogger("learner_api.evaluator")

#: signal name -> value (global) or {tenant: value} (per tenant)
Signals = dict[str, float | dict[str, float]]
Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Alert:
    rule: Rule
    labels: dict[str, str]
    active_since: datetime
    value: float
    state: str = "pending"  # pending | firing | resolved
    resolved_at: datetime | None = None

    def payload(self, valid_for: float, generator: str) -> dict[str, object]:
        annotations = {name: _render(text, self.value, self.labels) for name, text in self.rule.annotations.items()}
        ends = self.resolved_at or datetime.fromtimestamp(datetime.now(UTC).timestamp() + valid_for, UTC)
        return {"labels": self.labels, "annotations": annotations, "startsAt": self.active_since.isoformat(),
                "endsAt": ends.isoformat(), "generatorURL": generator}


def _render(text: str, value: float, labels: dict[str, str]) -> str:
    shown = f"{value:g}"
    text = text.replace("{{ $value }}", shown).replace("{{$value}}", shown)
    for name, label in labels.items():
        text = text.replace(f"{{{{ $labels.{name} }}}}", label)
    return text


class AlertEngine:
    def __init__(self, rules: RuleFile, metrics: EvaluatorMetrics) -> None:
        self.rules, self.metrics = rules, metrics
        self.alerts: dict[Key, Alert] = {}
        for rule in rules.rules:
            metrics.alerts_firing.labels(rule.alert).set(0)

    def evaluate(self, signals: Signals, now: datetime | None = None) -> list[Alert]:
        """Advance every alert's state; returns what Alertmanager should hear now (firing and just resolved)."""
        now = now or datetime.now(UTC)
        seen: set[Key] = set()
        for rule in self.rules.rules:
            measured = signals.get(rule.signal)
            if measured is None:
                continue  # not measurable right now (a dependency is down): keep states as they are
            samples = measured if isinstance(measured, dict) else {"": measured}
            for tenant, value in samples.items():
                if not rule.active(value):
                    continue
                labels = {"alertname": rule.alert, **rule.labels, **({"tenant": tenant} if tenant else {})}
                key: Key = (rule.alert, tuple(sorted(labels.items())))
                seen.add(key)
                alert = self.alerts.setdefault(key, Alert(rule, labels, now, value))
                alert.value = value
                if alert.state == "pending" and (now - alert.active_since).total_seconds() >= rule.for_:
                    alert.state = "firing"
                    logger.warning("alert %s firing (%s)", rule.alert, labels)
        notify: list[Alert] = []
        for key, alert in list(self.alerts.items()):
            if key in seen:
                if alert.state == "firing":
                    notify.append(alert)
                continue
            if signals.get(alert.rule.signal) is None:
                continue  # not measured this time: unknown, not resolved
            del self.alerts[key]
            if alert.state == "firing":
                alert.state, alert.resolved_at = "resolved", now
                logger.info("alert %s resolved (%s)", alert.rule.alert, alert.labels)
                notify.append(alert)
        for rule in self.rules.rules:
            self.metrics.alerts_firing.labels(rule.alert).set(
                sum(1 for a in self.alerts.values() if a.rule.alert == rule.alert and a.state == "firing"))
        return notify


class Alertmanager:
    def __init__(self, url: str, metrics: EvaluatorMetrics, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.metrics, self.timeout = metrics, timeout

    async def send(self, alerts: list[Alert], valid_for: float, generator: str) -> bool:
        if not alerts:
            return True
        body = json.dumps([alert.payload(valid_for, generator) for alert in alerts]).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310  # http(s) from config
                                         headers={"Content-Type": "application/json"})
        try:
            await asyncio.to_thread(self._post, request)
        except (OSError, http.client.HTTPException) as exc:  # down, or not an HTTP server (BadStatusLine...)
            self.metrics.notifications.labels("failed").inc()
            logger.warning("Alertmanager did not take %d alerts: %s", len(alerts), exc)
            return False
        self.metrics.notifications.labels("sent").inc()
        return True

    def _post(self, request: urllib.request.Request) -> None:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            response.read()
