"""Zero writes at rest, against a server that does not echo back what it was sent.

The emulator stores built-in kinds as a real API server does (empty lists omitted, quantities
canonical, defaults filled, lists merged by key, field ownership in managedFields), so a drift check
that compares our manifest with what comes back would apply on every reconcile here, as it did on a
real cluster (the Pushgateway NetworkPolicy's ``egress: []``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conftest import EXAMPLES, load
from tests.operator_harness import NS, AnyCluster, Operator, eventually, resync_writes, running_operator, settled
from tests.test_operator import API, EVALUATOR, secret

pytestmark = pytest.mark.operator


def _platform(example: str, **spec: Any) -> dict[str, Any]:
    doc = load(EXAMPLES / example)
    doc["metadata"]["namespace"] = NS  # the namespace the suite gets on either backend
    doc["spec"].update(copy.deepcopy(spec))
    return doc


async def _converged(cluster: AnyCluster, operator: Operator, doc: dict[str, Any]) -> str:
    namespace = str(doc["metadata"]["namespace"])
    cluster.put(secret())
    cluster.put(doc)
    await eventually(lambda: cluster.get("apps/v1", "deployments", namespace, API), what="learner-api Deployment")
    await settled(cluster, operator)
    # The HPA's first sync raises the Deployment to minReplicas, and the status says so (one write). A real
    # controller does it 15 s after the HPA is made, in the middle of what a test measures, unless played first.
    cluster.run_autoscalers(namespace)
    await settled(cluster, operator)
    return namespace


@pytest.fixture
async def operator(cluster: AnyCluster) -> Any:
    async with running_operator(cluster) as op:
        yield op


VARIANTS = {
    "minimal": _platform("01-minimal.yaml"),
    "staging-pushgateway": _platform("02-staging.yaml"),
    "production-servicemonitor": _platform("03-production.yaml"),
    "evaluator-off": _platform("01-minimal.yaml", evaluator={"enabled": False}),
    "no-hpa-no-networkpolicy": _platform("01-minimal.yaml", learnerApi={"replicas": 3, "autoscaling": {
        "enabled": False}}, networkPolicy={"enabled": False}),
    "quantities-the-server-rewrites": _platform("01-minimal.yaml", learnerApi={"resources": {
        "requests": {"cpu": "0.1", "memory": "0.25Gi"}, "limits": {"cpu": "1000m", "memory": "524288Ki"}}}),
}


@pytest.mark.parametrize("doc", VARIANTS.values(), ids=VARIANTS.keys())
async def test_a_converged_platform_costs_no_write_per_resync(
    cluster: AnyCluster, operator: Operator, doc: dict[str, Any],
) -> None:
    await _converged(cluster, operator, copy.deepcopy(doc))
    assert await resync_writes(cluster, operator) == []
    assert await resync_writes(cluster, operator) == []


async def test_an_env_var_someone_else_added_is_left_alone_without_writes(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """`kubectl set env deployment/x DEBUG=1`: their entry in our container, owned by their manager.

    Server-side apply cannot remove an entry another manager owns, and the operator does not fight
    for fields it never set: the entry stays, and it costs no write now or at any later resync.
    """
    namespace = await _converged(cluster, operator, _platform("01-minimal.yaml"))

    def set_env(deployment: dict[str, Any]) -> None:
        deployment["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "DEBUG", "value": "1"})

    cluster.update("apps/v1", "deployments", namespace, API, set_env, manager="kubectl-set")
    await settled(cluster, operator)
    assert await resync_writes(cluster, operator) == []
    env = cluster.get("apps/v1", "deployments", namespace, API)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "DEBUG", "value": "1"} in env
    assert any(item["name"] == "DATABASE_URL" for item in env)


async def test_a_field_we_own_changed_by_someone_else_costs_one_write(cluster: AnyCluster, operator: Operator) -> None:
    """`kubectl set image`: the field moves to their manager; one apply takes it back, then quiet."""
    namespace = await _converged(cluster, operator, _platform("01-minimal.yaml"))
    image = cluster.get("apps/v1", "deployments", namespace, EVALUATOR)["spec"]["template"]["spec"]["containers"][
        0]["image"]
    start = len(cluster.log)

    def set_image(deployment: dict[str, Any]) -> None:
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:1"

    cluster.update("apps/v1", "deployments", namespace, EVALUATOR, set_image, manager="kubectl-set")
    await eventually(lambda: cluster.get("apps/v1", "deployments", namespace, EVALUATOR)["spec"]["template"]["spec"][
        "containers"][0]["image"] == image, what="image restored")
    await settled(cluster, operator)
    assert [(r.resource.plural, r.name) for r in cluster.mutating_requests(start)] == [("deployments", EVALUATOR)]
    assert await resync_writes(cluster, operator) == []


async def test_replicas_scaled_by_hand_without_the_hpa_are_restored_once(
    cluster: AnyCluster, operator: Operator,
) -> None:
    doc = _platform("01-minimal.yaml", learnerApi={"replicas": 3, "autoscaling": {"enabled": False}})
    namespace = await _converged(cluster, operator, doc)
    start = len(cluster.log)
    cluster.edit("apps/v1", "deployments", namespace, API, {"spec": {"replicas": 7}}, manager="kubectl-scale",
                 subresource="scale")
    await eventually(lambda: cluster.get("apps/v1", "deployments", namespace, API)["spec"]["replicas"] == 3,
                     what="replicas restored")
    await settled(cluster, operator)
    assert [(r.resource.plural, r.name) for r in cluster.mutating_requests(start)] == [("deployments", API)]
    assert await resync_writes(cluster, operator) == []


async def test_the_hpa_owns_replicas_and_the_operator_never_fights_it(cluster: AnyCluster, operator: Operator) -> None:
    namespace = await _converged(cluster, operator, _platform("01-minimal.yaml"))
    start = len(cluster.log)
    cluster.scale(namespace, API, 6)
    await settled(cluster, operator)
    assert await resync_writes(cluster, operator) == []
    # The status says 0/6 now; nothing else is written.
    assert [(r.resource.plural, r.subresource) for r in cluster.mutating_requests(start)] == [
        ("learnerplatforms", "status")]
    assert cluster.get("apps/v1", "deployments", namespace, API)["spec"]["replicas"] == 6


@pytest.mark.parametrize("doc", [VARIANTS["staging-pushgateway"], VARIANTS["quantities-the-server-rewrites"]],
                         ids=["staging-pushgateway", "quantities"])
async def test_a_restarted_operator_finds_the_children_in_sync_without_writes(
    cluster: AnyCluster, doc: dict[str, Any],
) -> None:
    """A new process has no apply answers of its own: its first look must not mistake normalisation for drift."""
    async with running_operator(cluster) as first:
        await _converged(cluster, first, copy.deepcopy(doc))
    start = len(cluster.log)
    async with running_operator(cluster) as second:
        await settled(cluster, second)
        await second.resync_now()
        await settled(cluster, second)
        assert second.writes == 0
    assert cluster.mutating_requests(start) == []


@pytest.mark.emulator_only("a second namespace of the suite's own; the real backend resets only NS")
async def test_an_operator_of_named_namespaces_keeps_each_ones_caches(cluster: AnyCluster) -> None:
    """One listing per namespace: each replaces only its own namespace's children, pods and Secrets."""
    other = "learning-b"
    cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    async with running_operator(cluster, namespaces=(NS, other)) as operator:
        for namespace in (NS, other):
            doc = _platform("01-minimal.yaml")
            doc["metadata"]["namespace"] = namespace
            cluster.put({**secret(), "metadata": {"name": "ai-platform-secrets", "namespace": namespace}})
            cluster.put(doc)
        for namespace in (NS, other):
            await eventually(lambda ns=namespace: cluster.get("apps/v1", "deployments", ns, API), what=namespace)
        await settled(cluster, operator)
        start = len(cluster.log)
        async with cluster.watch_gap():  # every informer lists again: one namespace's list must not drop the other's
            pass
        await settled(cluster, operator, quiet=1.0)
        await operator.resync_now()
        await settled(cluster, operator)
        assert cluster.mutating_requests(start) == []
        reads = [r for r in cluster.log[start:]
                 if r.method.value == "GET" and r.name and r.params.get("watch") != "true"]
        assert reads == []  # not even the Secrets


async def test_autoscaling_switched_on_keeps_the_replicas_until_the_hpa_moves_them(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """Server-side apply drops a field its only manager stops sending: without a hand-over the Deployment
    would fall back to 1 replica until the HPA acts."""
    doc = _platform("01-minimal.yaml", learnerApi={"replicas": 4, "autoscaling": {"enabled": False}})
    namespace = await _converged(cluster, operator, doc)
    assert cluster.get("apps/v1", "deployments", namespace, API)["spec"]["replicas"] == 4
    cluster.edit("learner.dev/v1alpha1", "learnerplatforms", namespace, "ai-platform",
                 {"spec": {"learnerApi": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}}})
    await eventually(lambda: cluster.get("autoscaling/v2", "horizontalpodautoscalers", namespace, API), what="HPA")
    await settled(cluster, operator)
    assert cluster.get("apps/v1", "deployments", namespace, API)["spec"]["replicas"] == 4
    cluster.scale(namespace, API, 5)  # the HPA takes over from there
    await settled(cluster, operator)
    assert await resync_writes(cluster, operator) == []
    assert cluster.get("apps/v1", "deployments", namespace, API)["spec"]["replicas"] == 5


@pytest.mark.emulator_only("the Secret's values are held 10 s: a loaded control plane may take longer for the first")
async def test_a_platform_created_right_after_another_reads_neither_itself_nor_the_secret(
    cluster: AnyCluster, operator: Operator,
) -> None:
    """A burst of creations costs writes only: the Secret read for the first platform serves the next ones
    (each gets its own salted digest), and a platform just seen on the watch is not read back."""
    cluster.put(secret())
    cluster.put(_platform("01-minimal.yaml"))
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, API), what="the first platform's Deployment")
    start = len(cluster.log)
    second = _platform("01-minimal.yaml")
    second["metadata"]["name"] = "second"
    cluster.put(second)
    await eventually(lambda: cluster.get("apps/v1", "deployments", NS, "second-learner-api"),
                     what="the second platform's Deployment")
    await settled(cluster, operator)
    reads = [(r.resource.plural if r.resource else "", r.name) for r in cluster.log[start:]
             if r.method.value == "GET" and r.name and r.params.get("watch") != "true"]
    assert reads == []
    first_hash, second_hash = (
        cluster.get("apps/v1", "deployments", NS, name)["spec"]["template"]["metadata"]["annotations"][
            "learner.dev/secret-hash"] for name in (API, "second-learner-api"))
    assert first_hash != second_hash  # salted per platform all the same
