"""The invariants: convergence within a minute of the last fault and no zombie children, no operator write
at rest, every acknowledged progress event stored exactly once and none dead-lettered, at most one order per
Idempotency-Key and each confirmed payment fulfilled once, every process ready and under its RSS bound,
Redis keys bounded. Each broken one is written to the history."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bench.soak.common import (
    CONVERGE_SECONDS,
    RSS_BOUND_MIB,
    SETTLE_SECONDS,
    STREAM,
    UNSERVED,
    ZOMBIE_GRACE_SECONDS,
    now,
)
from bench.soak.faults import UNCLEAN_REDIS, Faults
from bench.soak.history import History
from bench.soak.kube import KubeApi
from bench.soak.load import Churn, Clients
from bench.soak.system import System
from learner_api.redis_client import CLUSTER_SHARDS
from learner_api.streams import CONSUMER_GROUP, ProgressStreams, dead_letters
from learner_operator.builders import children
from learner_operator.builders.common import Platform
from learner_operator.models import LearnerPlatformSpec


def converged(cluster: KubeApi, lp: dict[str, Any], owned: dict[str, set[tuple[str, str]]]) -> str:
    """Empty when ``lp`` is as its spec asks (children, status); else what is not (yet)."""
    meta, status = lp["metadata"], lp.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return f"observedGeneration {status.get('observedGeneration')} != generation {meta.get('generation')}"
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    spec = LearnerPlatformSpec.model_validate(lp["spec"])
    if spec.paused:
        reasons = {c.get("reason") for c in conditions.values()}
        return "" if "Paused" in reasons else f"paused but no condition says so: {sorted(map(str, reasons))}"
    ready = conditions.get("Ready", {})
    if ready.get("status") != "True":
        return f"Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')}"
    platform = Platform(meta["name"], meta["namespace"], meta["uid"], spec)
    wanted = {(m["kind"], m["metadata"]["name"]) for m in children(platform, unserved=UNSERVED)}
    have = {k for k in owned.get(meta["uid"], set()) if k[0] not in ("Job", "Pod")}
    if wanted != have:
        return f"children: missing {sorted(wanted - have)}, extra {sorted(have - wanted)}"
    api = cluster.get("apps/v1", "deployments", meta["namespace"], f"{meta['name']}-learner-api") or {}
    images = [c["image"] for c in api.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]
    if not images or not images[0].endswith(":" + spec.image.tag):
        return f"learner-api runs {images}, the spec says {spec.image.tag}"
    return ""


class Checks:
    """Checks the invariants as the run goes and after it; the counts it read go in the report."""

    def __init__(self, system: System, churn: Churn, clients: Clients, faults: Faults, history: History,
                 args: argparse.Namespace) -> None:
        self.system, self.churn, self.clients, self.faults = system, churn, clients, faults
        self.history, self.args = history, args
        self.cluster, self.controllers, self.stats = system.kube.cluster, system.controllers, history.stats
        self.stored_events = 0
        self.redis_keys = 0
        self.redis_keys_without_ttl = 0
        self.zombie_seen: dict[str, float] = {}  # a deleted platform's uid -> when a child of it was first seen
        self.unowned_reported: set[str] = set()
        self.phantom_lag: dict[str, int] = {}

    def broke(self, what: str) -> None:
        self.history.broke(what)

    def check_zombies(self, owned: dict[str, set[tuple[str, str]]], *, final: bool = False) -> None:
        """A child of a deleted platform that stays. A replica frozen while its create was on the wire can
        still land it after the deletion (no lease fences a request already sent); the garbage collector
        then removes it, as a real cluster's does, within a moment of the API server answering. So one is a
        zombie once it outlives ZOMBIE_GRACE_SECONDS with the API server up, or is there at the end; a child
        of a deleted platform made without an ownerReference, which no collector ever removes, at once."""
        at = now()
        for uid in set(self.zombie_seen) - set(owned):
            self.stats.orphans_collected += 1  # landed late, collected: what a real cluster does too
            del self.zombie_seen[uid]
        if self.faults.api_down:
            self.zombie_seen = dict.fromkeys(self.zombie_seen, at)  # the collector waits for the server too
        for uid in set(owned) & self.churn.deleted_uids:
            first = self.zombie_seen.setdefault(uid, at)
            if final or at - first > ZOMBIE_GRACE_SECONDS:
                self.broke(f"zombie: {sorted(owned[uid])} owned by a deleted LearnerPlatform (uid {uid}), still "
                           f"there {at - first:.0f} s after it was first seen")
                self.churn.deleted_uids.discard(uid)  # reported once
                del self.zombie_seen[uid]
        for key in self.controllers.unowned_children():
            if key not in self.unowned_reported:
                self.unowned_reported.add(key)
                self.broke(f"zombie: {key} is a platform's child that no LearnerPlatform owns")

    def measure_convergence(self) -> None:
        owned = self.controllers.owned()
        self.check_zombies(owned)
        for lp in self.controllers.platforms():
            key = (lp["metadata"]["namespace"], lp["metadata"]["name"])
            if key in self.churn.pending and not converged(self.cluster, lp, owned):
                since, generation = self.churn.pending.pop(key)
                if int(lp["metadata"].get("generation") or 1) >= generation:
                    self.stats.convergence.append(now() - since)
                else:
                    self.churn.pending[key] = (since, generation)

    def final_pass(self) -> dict[str, str]:
        """Play the controllers once, then what each platform still waits for (converged ones timed)."""
        self.controllers.play_controllers()
        owned = self.controllers.owned()
        self.check_zombies(owned)
        waiting = {}
        for lp in self.controllers.platforms():
            key = f"{lp['metadata']['namespace']}/{lp['metadata']['name']}"
            why = converged(self.cluster, lp, owned)
            if why:
                waiting[key] = why
            elif key not in self.stats.final_convergence:
                self.stats.final_convergence[key] = max(0.0, now() - self.faults.last_fault_end)
        return waiting

    async def finish(self) -> None:
        """After the last fault: convergence, readiness, the drained stream, then the writes at rest."""
        # every process that should run is back and ready
        late = await self.system.wait_ready(within=60)
        if late:
            self.broke(f"not ready 60 s after the last fault: {late}")
        # convergence within 60 s of the last fault
        deadline = self.faults.last_fault_end + CONVERGE_SECONDS
        waiting: dict[str, str] = {}
        while True:
            waiting = await self.system.kube.call(self.final_pass)
            if not waiting or now() > deadline:
                break
            await asyncio.sleep(0.5)
        for key, why in waiting.items():
            self.broke(f"{key} not converged {CONVERGE_SECONDS:.0f} s after the last fault: {why}")
        await self.drain()
        # A replica frozen mid-reconcile may still send, once thawed, the write it had checked its lease for
        # (no lease fences that), and the leader then repairs what it wrote: both are the last fault's
        # convergence, not writes at rest. So rest begins once nothing but lease renewals was written for
        # SETTLE_SECONDS; still writing a minute after convergence is a broken invariant of its own.
        if not await self.settled(within=CONVERGE_SECONDS):
            self.broke(f"the operator still writes {CONVERGE_SECONDS:.0f} s after convergence")
        # at rest: no operator writes (lease renewals aside) for --quiet-seconds
        start = len(self.cluster.log)
        await asyncio.sleep(self.args.quiet_seconds)
        # nothing to do at rest; a write it needed would show below
        await self.system.kube.call(self.controllers.play_controllers)
        for request in self.cluster.mutating_requests(start):
            if request.resource is None or request.resource.plural != "leases":
                self.stats.writes_at_rest.append(f"{request.method.value} {request.url}")
        if self.stats.writes_at_rest:
            self.broke(f"{len(self.stats.writes_at_rest)} operator writes in {self.args.quiet_seconds:.0f} s "
                       f"at rest: {self.stats.writes_at_rest[:5]}")
        await self.system.kube.call(self.check_at_rest)
        await self.check_data()

    def check_at_rest(self) -> None:
        owned = self.controllers.owned()
        self.check_zombies(owned, final=True)
        for lp in self.controllers.platforms():
            if why := converged(self.cluster, lp, owned):
                self.broke(f"{lp['metadata']['namespace']}/{lp['metadata']['name']} diverged at rest: {why}")

    def writes_since(self, start: int) -> int:
        return sum(1 for request in self.cluster.mutating_requests(start)
                   if request.resource is None or request.resource.plural != "leases")

    async def settled(self, within: float) -> bool:
        """Until the operator wrote nothing but lease renewals for SETTLE_SECONDS; False after ``within``."""
        deadline, mark, since = now() + within, len(self.cluster.log), now()
        while now() - since < SETTLE_SECONDS:
            if now() > deadline:
                return False
            await asyncio.sleep(0.25)
            await self.system.kube.call(self.controllers.play_controllers)
            if self.writes_since(mark):
                mark, since = len(self.cluster.log), now()
        return True

    def streams(self) -> list[str]:
        """The progress streams: one on a server, one per shard on a cluster (learner-api's default count)."""
        cluster = self.system.redis.cluster
        return ProgressStreams(STREAM, CLUSTER_SHARDS if cluster else 1, cluster).streams

    async def drain(self) -> None:
        """Until the evaluators have stored every entry of every stream (bounded: 180 s)."""
        client = self.system.redis.client()
        try:
            deadline = now() + 180
            undrained: dict[str, Any] = {}
            while now() < deadline:
                undrained = {}
                for stream in self.streams():
                    try:
                        groups = {g["name"].decode(): g for g in await client.xinfo_groups(stream)}
                    except ResponseError:  # no such stream: nothing was queued on it
                        continue
                    group = groups.get(CONSUMER_GROUP)
                    if not (group and group["pending"] == 0 and not await client.xrange(
                            stream, min=b"(" + group["last-delivered-id"], count=1)):
                        undrained[stream] = group
                    elif group.get("lag") and stream not in self.phantom_lag:
                        # Redis before 7.4 can keep reporting a lag after a stream moved or failed over and
                        # was trimmed (redis/redis#13337, #13336): nothing is left to deliver, though
                        self.phantom_lag[stream] = int(group["lag"])
                        self.history.record("redis_phantom_lag", stream=stream, lag=int(group["lag"]))
                        print(f"  note: {stream} drained, yet Redis reports a lag of {group['lag']} "
                              "(redis/redis#13337: KEDA and the evaluator's lag metric see it too)", flush=True)
                if not undrained:
                    return
                await asyncio.sleep(1)
            self.broke(f"the evaluators did not drain the stream within 180 s: {undrained}")
        finally:
            await client.aclose()

    async def redis_counts(self) -> tuple[int, list[bytes]]:
        """Dead letters over every stream; keys (and those without a TTL) over every node holding keys."""
        client = self.system.redis.client()
        try:
            dead = 0
            for stream in self.streams():
                dead += await client.xlen(dead_letters(stream))
        finally:
            await client.aclose()
        self.redis_keys, without_ttl = 0, []
        for url in await self.system.redis.node_urls():
            node = aioredis.from_url(url)
            try:
                self.redis_keys += await node.dbsize()
                keys = [k async for k in node.scan_iter(count=1000)]
                for start in range(0, len(keys), 1000):
                    async with node.pipeline(transaction=False) as pipe:
                        for key in keys[start:start + 1000]:
                            pipe.ttl(key)
                        ttls = await pipe.execute()
                    without_ttl += [k for k, ttl in zip(keys[start:start + 1000], ttls, strict=True) if ttl == -1]
            finally:
                await node.aclose()
        return dead, without_ttl

    async def check_data(self) -> None:
        connection = await asyncpg.connect(self.system.admin_db_url())
        try:
            stored = Counter(str(r["event_id"]) for r in await connection.fetch("SELECT event_id FROM progress_events"))
            orders = Counter(r["learner_id"] for r in await connection.fetch("SELECT learner_id FROM orders"))
            rows = await connection.fetch("SELECT learner_id, status FROM orders")
            paid = {r["learner_id"]: r["status"] for r in rows}
            entitled = Counter(r["learner_id"] for r in await connection.fetch("SELECT learner_id FROM entitlements"))
        finally:
            await connection.close()
        self.stored_events = len(stored)
        missing = self.clients.progress_acked - set(stored)
        if missing:
            unclean = {k: n for k, n in self.stats.faults.items() if k in UNCLEAN_REDIS}
            why = (f" (after unclean Redis faults {unclean}: Redis replicates asynchronously and learner-api "
                   "does not WAIT for a replica, docs/install.md 'Redis Cluster')") if unclean else ""
            self.broke(f"{len(missing)} progress events answered 202 are not stored, e.g. {sorted(missing)[:3]}"
                       + why)
        twice = [k for k, n in stored.items() if n > 1]
        if twice:
            self.broke(f"{len(twice)} progress events stored more than once, e.g. {twice[:3]}")
        unknown = set(stored) - self.clients.progress_sent
        if unknown:
            self.broke(f"{len(unknown)} stored progress events were never sent, e.g. {sorted(unknown)[:3]}")
        dead, without_ttl = await self.redis_counts()
        if dead:
            self.broke(f"{dead} valid progress events dead-lettered")
        self.redis_keys_without_ttl = len(without_ttl)
        if len(without_ttl) > 50:
            self.broke(f"{len(without_ttl)} Redis keys never expire (bounded by 50): {sorted(without_ttl)[:5]}")
        for learner, buyer in self.clients.buyers.items():
            if orders[learner] > 1:
                self.broke(f"{orders[learner]} orders for one Idempotency-Key ({learner}, key {buyer['key']})")
            if buyer["paid"] and (paid.get(learner) != "paid" or entitled[learner] != 1):
                self.broke(f"{learner}'s confirmed payment: order {paid.get(learner)}, "
                           f"{entitled[learner]} entitlements (1 expected)")
        for proc in self.system.procs.values():
            bound = RSS_BOUND_MIB.get(proc.kind)
            if bound and proc.peak_rss_mib > bound:
                self.broke(f"{proc.name} reached {proc.peak_rss_mib:.0f} MiB RSS (bound {bound:.0f})")
