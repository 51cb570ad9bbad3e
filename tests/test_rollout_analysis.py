"""The canary analysis' arithmetic: metrics as learner-api exports them, the p99 estimate, the SLO verdicts."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from learner_api.metrics import HttpMetrics
from learner_operator.kube.scrape import PodMetrics, metrics_url, parse, quantile, total
from learner_operator.models import parse_spec
from learner_operator.rollout import judge
from tests.conftest import EXAMPLES, load


def exposition(latencies: dict[str, list[float]], statuses: dict[str, list[int]]) -> str:
    """What learner-api's /metrics serves after these requests (its own metric classes)."""
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    for route, seconds in latencies.items():
        for value, status in zip(seconds, statuses[route], strict=True):
            metrics.latency.labels("GET", route).observe(value)
            metrics.requests.labels("GET", route, f"{status // 100}xx").inc()
    return generate_latest(registry).decode()


def test_probes_are_left_out_and_5xx_counted() -> None:
    text = exposition({"/v1/courses": [0.004] * 10, "/readyz": [0.001] * 50},
                      {"/v1/courses": [200] * 7 + [500] * 3, "/readyz": [503] * 50})
    metrics = parse(text)
    assert (metrics.requests, metrics.errors) == (10, 3)
    assert quantile(0.99, metrics.buckets) == pytest.approx(0.005, abs=0.001)


def test_p99_follows_the_slow_tail_like_histogram_quantile() -> None:
    slow = parse(exposition({"/v1/courses": [0.9] * 100}, {"/v1/courses": [200] * 100}))
    assert quantile(0.99, slow.buckets) == pytest.approx(0.995)  # within the (0.5, 1] bucket, as Prometheus says
    beyond = parse(exposition({"/v1/courses": [30.0] * 10}, {"/v1/courses": [200] * 10}))
    assert quantile(0.99, beyond.buckets) == 2.5  # the +Inf bucket answers the highest finite bound
    assert quantile(0.99, ()) == 0


def test_windows_and_sums() -> None:
    before = parse(exposition({"/v1/courses": [0.004] * 10}, {"/v1/courses": [200] * 10}))
    after = parse(exposition({"/v1/courses": [0.004] * 10 + [0.2] * 10}, {"/v1/courses": [200] * 10 + [500] * 10}))
    window = after.minus(before)
    assert (window.requests, window.errors) == (10, 10)
    assert quantile(0.5, window.buckets) > 0.1
    assert after.minus(PodMetrics(requests=1e9)) == after  # a restarted pod: its counters began again
    assert total([before, before]).requests == 20


def test_the_metrics_port_is_the_pods_own() -> None:
    pod: dict[str, Any] = {"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "10.0.0.7"},
                           "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000},
                                                              {"name": "metrics", "containerPort": 9102}]}]}}
    assert metrics_url(pod) == "http://10.0.0.7:9102/metrics"
    assert metrics_url({**pod, "status": {"phase": "Pending"}}) is None


def figures(requests: int, ratio: float, p99: float) -> dict[str, Any]:
    return {"pods": 1, "requests": requests, "errors": int(requests * ratio), "errorRatio": ratio, "p99Ms": p99}


@pytest.mark.parametrize(("canary", "stable", "verdict"), [
    (figures(99, 0.5, 5), figures(1000, 0, 5), "Waiting"),  # fewer than minRequests: no verdict, however bad
    (figures(100, 0.06, 5), figures(1000, 0.06, 5), "ErrorRatio"),  # the ceiling holds whatever stable does
    (figures(100, 0.03, 5), figures(1000, 0.01, 5), "ErrorRatio"),  # 2 points above stable
    (figures(100, 0.015, 5), figures(1000, 0.01, 5), ""),  # within the margin
    (figures(100, 0.03, 5), figures(10, 0.0, 5), ""),  # stable not measured enough: only the ceilings
    (figures(100, 0, 995), figures(1000, 0, 6), "Latency"),
    (figures(100, 0, 40), figures(1000, 0, 6), ""),  # 6.7x, but only 34 ms more: not a breach
    (figures(100, 0, 2100), figures(1000, 0, 1900), "Latency"),  # the ceiling
], ids=["waiting", "ceiling", "increase", "margin", "unmeasured-stable", "slow", "fast-enough", "latency-ceiling"])
def test_slo_verdicts(canary: dict[str, Any], stable: dict[str, Any], verdict: str) -> None:
    spec = parse_spec({**load(EXAMPLES / "01-minimal.yaml")["spec"], "rollout": {"strategy": "Canary"}})
    assert judge(spec, canary, stable)[0] == verdict
