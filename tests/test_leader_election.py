"""Several operator replicas: all watch, only the Lease holder writes, another takes over."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
from typing import Any

import pytest

from learner_operator.handlers import LeaseConfig
from learner_operator.kube.client import ApiError, NotLeading, connect
from learner_operator.kube.lease import LeaderElection
from tests.conftest import EXAMPLES, load
from tests.operator_harness import NS, AnyCluster, Operator, eventually, operator_api, settled
from tests.test_operator import API, api_container, children, secret

pytestmark = pytest.mark.operator


def lease(who: str) -> LeaseConfig:
    return LeaseConfig(namespace=NS, identity=who, lease_seconds=2, renew_seconds=0.2)


def holder(cluster: AnyCluster) -> Any:
    found = cluster.get("coordination.k8s.io/v1", "leases", NS, "learner-platform-operator") or {}
    return (found.get("spec") or {}).get("holderIdentity")


async def test_only_the_leader_writes_and_a_follower_takes_over(cluster: AnyCluster) -> None:
    first, second = Operator(cluster, lease=lease("replica-a")), Operator(cluster, lease=lease("replica-b"))
    await first.start()
    await eventually(lambda: holder(cluster) == "replica-a", what="replica-a leads")
    await second.start()
    try:
        cluster.put(secret())
        cluster.put(load(EXAMPLES / "01-minimal.yaml"))
        await eventually(lambda: len(children(cluster)) == 12)
        await settled(cluster, first)
        assert first.writes == 14  # 12 children, the migration Job and one status write
        assert second.writes == 0  # it watched everything, and wrote nothing

        await first.stop()  # a clean stop releases the Lease: no waiting for it to expire
        await eventually(lambda: holder(cluster) == "replica-b", within=5, what="replica-b takes over")
        cluster.edit("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform",
                     {"spec": {"image": {"tag": "after-failover"}}})
        await eventually(lambda: api_container(cluster)["image"].endswith(":after-failover"))
        assert second.writes > 0
        cluster.remove("v1", "services", NS, API)
        await eventually(lambda: cluster.get("v1", "services", NS, API), what="drift repaired by the new leader")
    finally:
        await second.stop()
        if first.alive:
            await first.stop()


async def test_an_expired_lease_is_taken_and_a_live_one_is_not(cluster: AnyCluster) -> None:
    api = await operator_api(cluster)
    try:
        now = datetime.datetime.now(datetime.UTC)
        for renewed, expected in ((now - datetime.timedelta(seconds=60), True), (now, False)):
            cluster.put({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": "l", "namespace": NS},
                         "spec": {"holderIdentity": "crashed-replica", "leaseDurationSeconds": 15,
                                  "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})
            election = LeaderElection(api, NS, "l", "me")
            assert await election.try_acquire_or_renew() is expected
            lease_spec = (cluster.get("coordination.k8s.io/v1", "leases", NS, "l") or {})["spec"]
            assert lease_spec["holderIdentity"] == ("me" if expected else "crashed-replica")
            cluster.remove("coordination.k8s.io/v1", "leases", NS, "l")
    finally:
        await api.close()


async def test_a_stale_read_cannot_steal_the_lease(cluster: AnyCluster) -> None:
    """Two candidates read the same expired Lease; the second update carries a stale resourceVersion."""
    api = await operator_api(cluster)
    try:
        # renewTime is a MicroTime: six fractional digits, or the server cannot decode the Lease (400)
        old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=60)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        cluster.put({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": "l", "namespace": NS},
                     "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 15, "renewTime": old}})
        stale = cluster.get("coordination.k8s.io/v1", "leases", NS, "l") or {}
        assert await LeaderElection(api, NS, "l", "fast").try_acquire_or_renew()
        with pytest.raises(ApiError) as refused:
            await api.merge_patch(LeaderElection(api, NS, "l", "slow").ref, {
                "metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": "slow"}})
        assert refused.value.status == 409
        assert (cluster.get("coordination.k8s.io/v1", "leases", NS, "l") or {})["spec"]["holderIdentity"] == "fast"
    finally:
        await api.close()


@pytest.mark.needs_controller("the garbage collector")
async def test_a_leader_frozen_past_its_lease_sends_no_write_when_it_wakes(cluster: AnyCluster) -> None:
    """The leader stops dead between reading a platform and writing its children (SIGSTOP, a VM or GC pause);
    another replica takes over and the platform is deleted meanwhile. Woken, the old leader used to send the
    writes it had prepared, re-creating children of a deleted platform (found by the chaos soak, seed 2)."""
    first = Operator(cluster, lease=lease("replica-a"))
    await first.start()
    second = Operator(cluster, lease=lease("replica-b"))
    try:
        await eventually(lambda: holder(cluster) == "replica-a", within=10, what="replica-a leads")
        await second.start()
        frozen, release, woke = threading.Event(), threading.Event(), threading.Event()
        fenced: list[NotLeading] = []
        api = first.runtime.deps.api
        apply = api.apply

        async def apply_after_a_freeze(*args: Any, **kwargs: Any) -> dict[str, Any]:
            if not frozen.is_set():
                frozen.set()
                release.wait(60)  # blocks replica-a's whole event loop: its lease renewals stop too
            try:
                return await apply(*args, **kwargs)
            except NotLeading as refused:
                fenced.append(refused)
                raise
            finally:
                woke.set()

        api.apply = apply_after_a_freeze  # type: ignore[method-assign]
        cluster.put(secret())
        cluster.put(load(EXAMPLES / "01-minimal.yaml"))
        try:
            await eventually(frozen.is_set, within=10, what="replica-a about to write")
            await eventually(lambda: holder(cluster) == "replica-b", within=15, what="replica-b takes over")
            await eventually(lambda: len(children(cluster)) == 12, within=20, what="replica-b converged it")
            cluster.remove("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")
            # a real garbage collector takes its time (up to ~40 s for a brand-new CRD's kind)
            await eventually(lambda: children(cluster) == set(), within=60, what="every child collected")
        finally:
            release.set()
        await eventually(woke.is_set, within=10, what="replica-a woke")
        assert fenced, "the woken old leader's write was sent, not refused at the fence"
        assert children(cluster) == set(), "the woken old leader re-created children of a deleted platform"
    finally:
        await second.stop()
        await first.stop()


async def test_leader_election_outlives_a_server_that_hangs_up() -> None:
    """An API server killed mid-request hangs up without an answer (aiohttp's ServerDisconnectedError, not an
    OSError): the election loop died of it, silently, and the replica never led or stopped leading again."""
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    api = await connect(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    election = LeaderElection(api, NS, "l", "me", lease_seconds=1, renew_seconds=0.05)
    running = asyncio.create_task(election.run())
    try:
        await eventually(lambda: attempts >= 5 or running.done(), within=30, what="five attempts")
        assert not running.done(), f"the election stopped: {running.exception()!r}"
        assert not election.leading
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await api.close()
        server.close()
        await server.wait_closed()


async def test_a_leader_unsure_of_its_lease_for_a_while_reconciles_as_soon_as_it_is_sure_again(
        cluster: AnyCluster) -> None:
    """On a busy machine a leader's renewals run late, and each time its writes are refused for a moment (the
    fence). Those refusals used to count as failures with exponential backoff: after a few, a platform waited
    minutes for its next try although the Lease was surely ours again (the chaos soak, seed 11: edits not acted
    on for 200 s). After six stopped reconciles the next try was 32 s away; it must come with the next renewal."""
    op = Operator(cluster, lease=lease("replica-a"))
    await op.start()
    try:
        await eventually(lambda: holder(cluster) == "replica-a", within=10, what="replica-a leads")
        fence = op.runtime.deps.api.write_fence
        assert fence is not None
        registry = op.runtime.deps.metrics.registry

        def stopped() -> float:  # reconciles stopped at the fence
            return registry.get_sample_value("learner_operator_reconciles_total", {"result": "fenced"}) or 0.0

        def unsure() -> None:
            if stopped() < 6:
                raise NotLeading("replica-a does not hold the lease for sure (its renewal is late)")
            fence()

        op.runtime.deps.api.write_fence = unsure
        cluster.put(secret())
        cluster.put(load(EXAMPLES / "01-minimal.yaml"))
        await eventually(lambda: stopped() >= 6, within=60, what="six reconciles stopped at the fence")
        await eventually(lambda: len(children(cluster)) == 12, within=20,
                         what="the platform's children, with the Lease surely held again")
    finally:
        await op.stop()


async def test_a_renewal_the_server_never_answers_ends_the_leadership_within_the_lease() -> None:
    """A renewal sent to a server that accepts and never answers (frozen, or a half-open connection) waited for
    the client's 5-minute timeout, the replica 'leading' all along with its writes fenced: nothing reconciled,
    and no other replica could see why. It is a failed renewal after lease - renew seconds, as client-go's
    RenewDeadline."""
    silent: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # held open, never written to

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    api = await connect(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    election = LeaderElection(api, NS, "l", "me", lease_seconds=2, renew_seconds=0.5)
    election.leading, election.renewed_at = True, asyncio.get_running_loop().time()  # renewed just now
    running = asyncio.create_task(election.run())
    try:
        await eventually(lambda: not election.leading or running.done(), within=30, what="the leadership given up")
        assert not running.done(), f"the election stopped: {running.exception()!r}"
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await api.close()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
