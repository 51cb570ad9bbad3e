"""The operator's own Prometheus metrics, in a registry of its own (tests run several operators)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


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
        self.api_requests = Counter(
            "learner_operator_api_requests_total", "Requests the reconciler sent to the Kubernetes API.",
            ["verb"], registry=self.registry,
        )
        self.api_available = Gauge(
            "learner_operator_api_server_available",
            "1 while the Kubernetes API server answers this operator's requests, 0 while it does not.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "learner_operator_work_queue_depth", "Platforms waiting for a reconcile.", registry=self.registry,
        )

    def watch_conditions(self, source: Callable[[], Iterable[tuple[str, str, list[dict[str, Any]]]]]) -> None:
        """Export every platform's conditions at scrape time from ``source`` (namespace, name, conditions).

        Read from the operator's own view of the platforms when Prometheus scrapes, so a thousand
        platforms cost no gauges in memory, and a deleted platform's series vanish with it.
        """
        self.registry.register(_ConditionCollector(source))


class _ConditionCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, str, list[dict[str, Any]]]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "learner_operator_platform_condition",
            "1 where a platform's condition has this status (three series per platform and condition type).",
            labels=["namespace", "name", "type", "status"],
        )
        for namespace, name, conditions in self._source():
            for condition in conditions:
                for status in ("True", "False", "Unknown"):
                    family.add_metric([namespace, name, str(condition.get("type")), status],
                                      1.0 if condition.get("status") == status else 0.0)
        yield family
