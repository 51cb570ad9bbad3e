"""The operator's own Prometheus metrics, in a registry of its own (tests run several operators)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "learner_operator_reconciles_total", "Reconciles of LearnerPlatforms by result.",
            ["result"], registry=self.registry,
        )
        self.duration = Histogram(
            "learner_operator_reconcile_duration_seconds", "Time one reconcile took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=self.registry,
        )
        self.platforms = Gauge(
            "learner_operator_platforms", "LearnerPlatforms this operator manages.", registry=self.registry,
        )
        self.condition = Gauge(
            "learner_operator_platform_condition",
            "1 where a platform's condition has this status (one series per platform, type and status).",
            ["namespace", "name", "type", "status"], registry=self.registry,
        )
        self.api_requests = Counter(
            "learner_operator_api_requests_total", "Requests the reconciler sent to the Kubernetes API.",
            ["verb"], registry=self.registry,
        )
        self.queue_depth = Gauge(
            "learner_operator_work_queue_depth", "Platforms waiting for a reconcile.", registry=self.registry,
        )

    def set_conditions(self, namespace: str, name: str, conditions: list[dict[str, str]]) -> None:
        for condition in conditions:
            for status in ("True", "False", "Unknown"):
                self.condition.labels(namespace, name, condition["type"], status).set(
                    1.0 if condition["status"] == status else 0.0
                )

    def forget(self, namespace: str, name: str, types: tuple[str, ...]) -> None:
        for kind in types:
            for status in ("True", "False", "Unknown"):
                with contextlib.suppress(KeyError):
                    self.condition.remove(namespace, name, kind, status)
