"""The operator when the world changes behind its watches: restarts, missed deletions, missing APIs."""

from __future__ import annotations

import asyncio
import collections.abc
import itertools
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from learner_operator.kube.backoff import EndlessBackoffs
from learner_operator.kube.client import Availability
from tests.conftest import EXAMPLES, load
from tests.operator_harness import NS, AnyCluster, Operator, eventually, running_operator, settled
from tests.test_operator import API, EVALUATOR, children, condition, conditions, secret

pytestmark = pytest.mark.operator
LP = ("learner.dev/v1alpha1", "learnerplatforms")


@pytest.fixture
async def operator(cluster: AnyCluster) -> AsyncIterator[Operator]:
    async with running_operator(cluster) as op:
        yield op


async def _converged(cluster: AnyCluster, operator: Operator, doc: dict[str, Any] | None = None) -> None:
    cluster.put(secret())
    cluster.put(doc or load(EXAMPLES / "01-minimal.yaml"))
    await eventually(lambda: len(children(cluster)) == 12, what="12 children")
    await settled(cluster, operator)


@pytest.mark.emulator_only("deletions inside a real restart race the watches' return (see RealCluster.watch_gap)")
async def test_a_child_deleted_while_watches_were_down_is_restored(cluster: AnyCluster, operator: Operator) -> None:
    """kopf re-lists after "410 Gone" but keeps what vanished meanwhile; a fresh list of our own does not."""
    await _converged(cluster, operator)
    async with cluster.watch_gap():
        cluster.remove("v1", "services", NS, API)
        cluster.remove("apps/v1", "deployments", NS, EVALUATOR)
    await eventually(lambda: cluster.get("v1", "services", NS, API) and cluster.get(
        "apps/v1", "deployments", NS, EVALUATOR), within=20, what="Service and Deployment restored")
    await settled(cluster, operator)
    assert len(children(cluster)) == 12


@pytest.mark.emulator_only("deletions inside a real restart race the watches' return (see RealCluster.watch_gap)")
async def test_a_platform_deleted_while_watches_were_down_is_not_resurrected(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await _converged(cluster, operator)
    start = len(cluster.log)
    async with cluster.watch_gap():
        cluster.remove(*LP, NS, "ai-platform")  # the garbage collector takes the children with it
        assert children(cluster) == set()
    # The re-list after "410 Gone" is empty, so no event says anything: the watcher's restart does.
    await eventually(lambda: operator.runtime.platforms.known() == [], within=15, what="the platform forgotten")
    await operator.resync_now()  # and a periodic resync must not bring it back
    await settled(cluster, operator, quiet=1.0)
    assert children(cluster) == set()
    assert cluster.mutating_requests(start) == []


@pytest.mark.emulator_only("a deletion that only the platform's watch misses is staged by the emulator")
async def test_a_deletion_the_platform_watch_missed_stops_at_the_first_write(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """The platform watch is stuck (429) while the children's watches see the garbage collector at work:
    each child event asks for a reconcile of a platform that no longer exists. None may write."""
    await _converged(cluster, operator)
    start = len(cluster.log)
    cluster.remove(*LP, NS, "ai-platform", quiet=True)  # no DELETED event for the platform, GC events for children
    await settled(cluster, operator, quiet=1.0)
    assert children(cluster) == set()
    applies = [r for r in cluster.mutating_requests(start) if r.method.value == "PATCH"]
    assert applies == []
    assert operator.runtime.platforms.known() == []


@pytest.mark.emulator_only("a real server sets deletionTimestamp only itself, and its GC would finish at once")
async def test_a_platform_being_deleted_in_the_foreground_is_left_to_the_garbage_collector(
    cluster: AnyCluster, operator: Operator,
) -> None:
    await _converged(cluster, operator)
    start = len(cluster.log)
    cluster.edit(*LP, NS, "ai-platform", {"metadata": {"finalizers": ["foregroundDeletion"],
                                                        "deletionTimestamp": "2026-11-26T00:00:00Z"}})
    cluster.remove("v1", "services", NS, API)  # the garbage collector's first step
    await settled(cluster, operator, quiet=1.0)
    assert cluster.get("v1", "services", NS, API) is None
    assert cluster.mutating_requests(start) == []


@pytest.fixture
def no_prometheus_operator(cluster: AnyCluster) -> AnyCluster:
    cluster.undeclare("monitoring.coreos.com", "v1", "servicemonitors")
    return cluster


@pytest.mark.emulator_only("the real backend serves a stand-in ServiceMonitor CRD for the whole session")
async def test_a_servicemonitor_without_its_api_is_a_condition_not_a_retry_loop(
    no_prometheus_operator: AnyCluster,
) -> None:
    cluster = no_prometheus_operator
    async with running_operator(cluster) as operator:
        doc = load(EXAMPLES / "03-production.yaml")
        cluster.put(secret())
        cluster.put(doc)
        await eventually(lambda: condition(cluster, "Degraded") == ("True", "ApiUnavailable"), what="Degraded")
        message = conditions(cluster)["Degraded"]["message"]
        assert "monitoring.coreos.com/v1 ServiceMonitor" in message
        assert "Prometheus Operator" in message
        assert not any(r.resource and r.resource.plural == "servicemonitors" and r.method.value != "GET"
                       for r in cluster.log)
        cluster.scale(NS, API, 3)
        cluster.set_deployment_status(NS, API)
        cluster.set_deployment_status(NS, EVALUATOR)
        await eventually(lambda: condition(cluster, "Ready") == ("True", "AllComponentsReady"),
                         what="Ready: serving, whatever the monitoring")
        await settled(cluster, operator)
        start = len(cluster.log)
        await operator.resync_now()
        await settled(cluster, operator)
        assert cluster.mutating_requests(start) == []


async def test_an_api_server_outage_is_recovered_from_unaided(cluster: AnyCluster, operator: Operator) -> None:
    """Every request fails for a while (watches, lists, the reconciler's own); then drift made meanwhile
    is repaired and new work is done, without a restart of the operator."""
    await _converged(cluster, operator)
    async with cluster.watch_gap(down=True):
        cluster.remove("v1", "services", NS, API)
        cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                     {"spec": {"evaluator": {"enabled": False}}})
        await operator.resync_now()  # the resync comes due during the outage: it must fail quietly
        await asyncio.sleep(3)
    await eventually(lambda: cluster.get("v1", "services", NS, API) is not None, within=30, what="Service back")
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, EVALUATOR) is None, within=30,
                     what="the spec change made during the outage applied")
    assert operator.alive
    await settled(cluster, operator)
    start = len(cluster.log)
    await operator.resync_now()
    await settled(cluster, operator)
    assert cluster.mutating_requests(start) == []



@pytest.mark.emulator_only("an edit delivered just before the API server goes away: a real restart cannot be timed so")
async def test_a_platform_that_failed_during_an_outage_goes_again_as_soon_as_the_server_answers(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """A change heard just before an outage fails to apply during it, again and again, and its backoff grows
    (0.5 s doubling here; 10 s doubling up to 5 minutes in production). After the outage nothing looks
    changed (the caches already hold the change), so nothing triggers it: it used to wait for its backoff,
    minutes after a long outage. It must go as soon as the operator's requests are answered again."""
    await _converged(cluster, operator)
    cluster.edit(*LP, NS, "ai-platform", {"spec": {"evaluator": {"enabled": False}}})
    async with cluster.watch_gap(down=True):  # no await between: the edit's event is the last one before it
        # tries at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s fail; the next would come 63.5 s in, 30 s after this
        await asyncio.sleep(33)
        assert cluster.get("apps/v1", "deployments", NS, EVALUATOR) is not None, "applied during the outage?"
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, EVALUATOR) is None, within=18,
                     what="the change heard before the outage applied soon after it")


def test_only_an_outage_counts_as_the_api_server_away() -> None:
    """A 500 from an admission webhook, a 429 from priority and fairness, one request lost between answered ones
    (one API server of several down behind a load balancer) are not an outage: each answer after them used to
    retry every failing platform at once, undoing their backoff (found by a second read of the change)."""
    returns: list[None] = []
    availability = Availability()
    availability.on_return = lambda: returns.append(None)
    for status in (500, 429, 200, 503, 200, 409, 504, 201):
        availability.answered(status)
    assert availability.available
    assert returns == []
    availability.AWAY_SECONDS = 0.0  # an outage: unanswered for at least that long
    availability.unanswered(ConnectionRefusedError("refused"))
    availability.answered(503)
    assert not availability.available
    assert availability.report()["lastError"] == "HTTP 503"
    availability.answered(200)
    availability.answered(200)
    assert availability.available
    assert returns == [None]  # once, at the first answer

#: The production delays at 1/50: the finite sequence they replaced (0.5, 1, 2, 4 and 37 times 8 s, 303.5 s in
#: all) would have run out after 6 s here.
FAST = EndlessBackoffs(scale=0.02)


def test_a_request_is_retried_forever_with_capped_jittered_delays() -> None:
    """kopf calls ``iter()`` on the setting per request: each request gets the whole sequence, endless."""
    backoffs = EndlessBackoffs()
    first = list(itertools.islice(backoffs, 10_000))
    assert first[:4] == [0.5, 1.0, 2.0, 4.0]
    assert all(6.0 <= delay <= 8.0 for delay in first[4:])
    assert len(set(first[4:])) > 100  # jittered: replicas that failed together do not retry together
    assert list(itertools.islice(backoffs, 4)) == [0.5, 1.0, 2.0, 4.0]  # the next request starts afresh
    assert not isinstance(backoffs, collections.abc.Sized)  # kopf would take len() of a Sized one


@pytest.mark.emulator_only("the API server kept away for many backoff cycles: a real one restarts within seconds")
async def test_an_api_server_away_longer_than_a_request_retries_does_not_stop_the_operator(
    cluster: AnyCluster,
) -> None:
    """kopf gives up a watch request after its error backoffs run out and then stops the whole operator:
    every replica at once (found by the chaos soak: first 40 s into an outage, then after 5 minutes).
    Here the outage lasts twice as long as the old sequence at the same scale, dozens of capped retries."""
    async with running_operator(cluster, api_backoffs=FAST) as operator:
        await _converged(cluster, operator)
        old_total = sum(FAST.scale * d for d in (0.5, 1, 2, 4) + (8,) * 37)
        async with cluster.watch_gap(down=True):
            failing = len(cluster.log)
            await asyncio.sleep(2 * old_total)
            assert operator.alive, f"the operator stopped during the outage: {operator.error!r}"
            retried = [r for r in cluster.log[failing:] if r.action == kmock.action.WATCH
                       and r.resource and r.resource.plural == "learnerplatforms"]
            # The old sequence allowed 42 attempts (the first and 41 retries), then stopped the operator.
            assert len(retried) > 42, "kopf's platform watch must have been retried beyond the old sequence"
        cluster.edit(*LP, NS, "ai-platform", {"spec": {"evaluator": {"enabled": False}}})
        await eventually(lambda: not operator.alive or cluster.get("apps/v1", "deployments", NS, EVALUATOR) is None,
                         within=30, what="a change made after the outage applied")
        assert operator.alive, f"the operator stopped after a request gave up: {operator.error!r}"


@pytest.mark.emulator_only("starting while the API server is away: a real control plane cannot be kept down")
async def test_an_operator_started_while_the_api_server_is_away_starts_as_soon_as_it_is_back(
    cluster: AnyCluster,
) -> None:
    """A replica restarted during an outage (a node drain while the control plane upgrades) used to fail its
    start-up on discovery and wait kopf's 60 s before trying again (found by the chaos soak, seed 1)."""
    cluster.put(secret())
    operator = Operator(cluster)
    async with cluster.watch_gap(down=True):
        starting = asyncio.create_task(operator.start())
        await asyncio.sleep(3)
    try:
        await asyncio.wait_for(starting, 15)
        cluster.put(load(EXAMPLES / "01-minimal.yaml"))
        await eventually(lambda: len(children(cluster)) == 12, within=15, what="12 children soon after the outage")
    finally:
        await operator.stop()
