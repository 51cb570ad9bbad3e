"""What the evaluator exports on /metrics (and pushes to a Pushgateway where scraping cannot reach)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class EntryLag(Collector):
    """A histogram of the time from XADD to commit, per entry, observed a batch at a time.

    A batch's ids come from one stream read, so they are in order (oldest first): each bucket's count is
    one binary search instead of one ``observe()`` per entry, which cost more than all the rest of the
    evaluator's Python per entry."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.bounds = name, documentation, tuple(buckets)
        self.cumulative = [0] * len(self.bounds)  # entries with lag <= bound
        self.count, self.sum = 0, 0.0
        registry.register(self)

    def observe_entries(self, now: float, ids: Sequence[bytes]) -> None:
        """``ids``: stream ids in order, so their XADD times rise."""
        if not ids:
            return
        # "<ms>-<seq> <ms>-<seq>..." -> [ms, ms, ...], in C (a loop over the ids in Python cost more)
        times = list(map(int, b" ".join(ids).replace(b"-", b" ").split()[::2]))
        for index, bound in enumerate(self.bounds):  # lag <= bound  <=>  time >= now - bound
            self.cumulative[index] += len(times) - bisect_left(times, (now - bound) * 1000)
        self.count += len(times)
        self.sum += max(0.0, now * len(times) - sum(times) / 1000)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        buckets = [(repr(float(bound)), count) for bound, count in zip(self.bounds, self.cumulative, strict=True)]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], [*buckets, ("+Inf", self.count)], self.sum)
        yield family


class EvaluatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.lesson_views = Counter("lesson_views_total", "Lesson views recorded (new rows only).",
                                    registry=registry)
        self.lesson_completed = Counter("lesson_completed_total", "Lesson completions recorded (new rows only).",
                                        registry=registry)
        self.events = Counter("evaluator_events_total", "Stream entries handled, by outcome.", ["outcome"],
                              registry=registry)
        for outcome in ("written", "duplicate", "dead_lettered", "retried"):
            self.events.labels(outcome)
        self.batch_size = Histogram("evaluator_batch_size", "Entries per batch written to PostgreSQL.",
                                    registry=registry, buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000))
        self.batch_seconds = Histogram("evaluator_batch_duration_seconds", "Time to write and acknowledge a batch.",
                                       registry=registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.commit_lag = EntryLag("evaluator_commit_lag_seconds", "From XADD by learner-api to the committed row.",
                                   (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry)
        self.pending = Gauge("evaluator_pending_entries", "Entries delivered but not yet acknowledged.",
                             registry=registry)
        self.lag_entries = Gauge("evaluator_stream_lag_entries", "Entries not yet delivered to the group.",
                                 registry=registry)
        self.ingest_lag = Gauge("evaluator_ingest_lag_seconds",
                                "Age of the oldest entry not yet in PostgreSQL (0 when caught up).", registry=registry)
        self.dead_letters = Gauge("evaluator_dead_letter_entries", "Entries in the dead-letter stream.",
                                  registry=registry)
        self.last_batch = Gauge("evaluator_last_batch_timestamp_seconds", "When a batch last committed.",
                                registry=registry)
        self.alerts_firing = Gauge("evaluator_alerts_firing", "Alert rules firing now, by alert name.",
                                   ["alertname"], registry=registry)
        self.notifications = Counter("evaluator_alert_notifications_total",
                                     "Alert batches sent to Alertmanager, by result.", ["result"], registry=registry)
        for result in ("sent", "failed"):
            self.notifications.labels(result)
