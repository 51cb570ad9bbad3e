"""The faults, drawn from the seed, several at once: each injected, held for a while and recovered from.

kill -9 of the operator's leader or a follower, of a learner-api or evaluator process; SIGSTOP/SIGCONT of
PostgreSQL, Redis or an operator replica; restart of PostgreSQL or Redis; the API server dropping every
watch, restarting (429, then 410 Gone) or away for 10-60 s (503) on the emulator, kube-apiserver stopped
(SIGTERM, kill -9) and started again, or away 10-60 s, on a real control plane; a child deleted or edited by
someone else. On a Redis Cluster (``--redis cluster``) the Redis faults are a coordinated failover, a master
killed or frozen around the node timeout, and a progress stream's slot moved to another master under load.

The plan (which fault, when, its durations and which of the candidates it hits) is drawn from a random
source of its own, derived from the seed alone: the same seed plans the same faults however the load and
the churn went. What a planned fault finds at the time (which replica leads, a target still busy with an
earlier fault: then it is skipped, and recorded so) is the run's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import signal
from dataclasses import dataclass
from typing import Any, ClassVar

import kmock

from bench.soak.common import STREAM, now
from bench.soak.history import History
from bench.soak.load import Churn
from bench.soak.processes import Proc
from bench.soak.redis_cluster import RedisClusterSide
from bench.soak.system import RedisServer, System

SERVER_REDIS = ("freeze_redis", "restart_redis", "kill_redis")
CLUSTER_REDIS = ("failover_redis", "kill_redis_master", "freeze_redis_master", "migrate_redis_slot")
#: Faults after which Redis may have lost what it acknowledged (async replication, no WAIT)
UNCLEAN_REDIS = ("kill_redis_master", "freeze_redis_master")


@dataclass(frozen=True)
class Planned:
    """One planned fault: ``gap`` seconds after the previous one; ``pick`` chooses among the candidates there
    are at the time, ``draws`` (each in [0, 1)) its durations."""

    n: int
    gap: float
    kind: str
    pick: float
    draws: tuple[float, float]

    def line(self) -> str:
        return f"{self.n}:{self.kind}@{self.gap:.2f}"


def fault_plan(seed: int, kinds: tuple[str, ...], mean_gap: float, seconds: float) -> list[Planned]:
    """The faults of ``seed`` over ``seconds``: a function of its arguments only, not of the run's timing."""
    rng = random.Random(f"{seed}:faults")  # noqa: S311  # replayable, not secret
    plan: list[Planned] = []
    at = 0.0
    while True:
        gap = rng.uniform(2, mean_gap * 2)
        at += gap
        if at >= seconds:
            return plan
        plan.append(Planned(len(plan), gap, rng.choice(kinds), rng.random(), (rng.random(), rng.random())))


def plan_digest(plan: list[Planned]) -> str:
    return hashlib.sha256(" ".join(p.line() for p in plan).encode()).hexdigest()[:12]


class Faults:
    """Injects the faults; ``busy`` names what a fault holds, ``api_down`` is true while the API server is
    away, ``last_fault_end`` when the last one ended (convergence is timed from it)."""

    FAULTS = ("kill_operator_leader", "kill_operator_follower", "freeze_operator", "kill_api", "kill_evaluator",
              "freeze_postgres", "restart_postgres", "kill_postgres", "freeze_redis", "restart_redis", "kill_redis",
              "watches_dropped", "apiserver_restart", "apiserver_outage", "child_deleted", "child_edited")
    TARGET: ClassVar[dict[str, str]] = {
        "freeze_postgres": "postgres", "restart_postgres": "postgres", "kill_postgres": "postgres",
        **dict.fromkeys(SERVER_REDIS + CLUSTER_REDIS, "redis"),
        "apiserver_restart": "kube", "apiserver_outage": "kube", "watches_dropped": "kube"}

    def __init__(self, system: System, churn: Churn, history: History, args: argparse.Namespace) -> None:
        self.system, self.churn, self.history, self.args = system, churn, history, args
        self.kinds = self.kinds_for(cluster=system.redis.cluster)
        self.plan = fault_plan(args.seed, self.kinds, args.fault_seconds, args.minutes * 60)
        self.procs, self.postgres, self.cluster = system.procs, system.postgres, system.kube.cluster
        self.stats = history.stats
        self.busy: set[str] = set()
        self.api_down = False
        self.last_fault_end = now()

    @classmethod
    def kinds_for(cls, *, cluster: bool) -> tuple[str, ...]:
        """The faults a run draws from: on a cluster, the cluster's Redis faults instead of the server's."""
        return tuple(k for k in cls.FAULTS if k not in SERVER_REDIS) + CLUSTER_REDIS if cluster else cls.FAULTS

    def record(self, op: str, **fields: Any) -> None:
        self.history.record(op, **fields)

    def span(self, draw: float, low: float, high: float) -> float:
        """A fault's duration from the plan, at most ``--longest-fault`` seconds (same draws whatever the cap)."""
        return min(low + draw * (high - low), float(self.args.longest_fault))

    async def _restart_later(self, proc: Proc, draw: float, low: float, high: float) -> None:
        await asyncio.sleep(low + draw * (high - low))
        proc.start()
        proc.restarts += 1

    async def fault(self, planned: Planned) -> None:
        kind, (first, second) = planned.kind, planned.draws
        rng = random.Random(planned.pick)  # noqa: S311  # picks among what there is: from the plan
        operators = [p for p in self.procs.values() if p.kind == "operator"]
        if kind in ("kill_operator_leader", "kill_operator_follower", "freeze_operator"):
            leader = await self.system.kube.call(self.system.controllers.leader)
            pool = [p for p in operators if p.running() and not p.frozen and p.name not in self.busy and
                    ((p.name == leader) == (kind == "kill_operator_leader") or kind == "freeze_operator")]
            if not pool:
                return
            proc = rng.choice(sorted(pool, key=lambda p: p.name))
            self.busy.add(proc.name)
            self.record("fault", n=planned.n, kind=kind, target=proc.name, leader=leader)
            try:
                if kind == "freeze_operator":
                    proc.send(signal.SIGSTOP)
                    proc.frozen = True
                    await asyncio.sleep(self.span(first, 2, 30))
                    proc.send(signal.SIGCONT)
                    proc.frozen = False
                else:
                    proc.kill9()
                    await self._restart_later(proc, second, 0.5, 10)
            finally:
                self.busy.discard(proc.name)
        elif kind in ("kill_api", "kill_evaluator"):
            pool = [p for p in self.procs.values() if p.kind == kind.split("_")[1] and p.running()
                    and p.name not in self.busy]
            if not pool:
                return
            proc = rng.choice(sorted(pool, key=lambda p: p.name))
            self.busy.add(proc.name)
            self.record("fault", n=planned.n, kind=kind, target=proc.name)
            try:
                proc.kill9()
                await self._restart_later(proc, second, 0.5, 5)
            finally:
                self.busy.discard(proc.name)
        elif kind in ("freeze_postgres", "restart_postgres", "kill_postgres"):
            self.record("fault", n=planned.n, kind=kind)
            if kind == "freeze_postgres":
                self.postgres.freeze()
                await asyncio.sleep(self.span(first, 2, 20))
                self.postgres.thaw()
            else:
                await asyncio.to_thread(self.postgres.stop, "fast" if kind == "restart_postgres" else "immediate")
                await asyncio.sleep(self.span(second, 0.5, 5))
                await asyncio.to_thread(self.postgres.start)
        elif kind in SERVER_REDIS:
            assert isinstance(self.system.redis, RedisServer)
            redis = self.system.redis.proc
            self.record("fault", n=planned.n, kind=kind)
            if kind == "freeze_redis":
                redis.send(signal.SIGSTOP)
                await asyncio.sleep(self.span(first, 2, 15))
                redis.send(signal.SIGCONT)
            else:
                if kind == "kill_redis":
                    redis.kill9()
                else:
                    redis.stop()
                await self._restart_later(redis, second, 0.5, 5)
        elif kind in CLUSTER_REDIS:
            await self.cluster_fault(planned)
        elif kind in ("watches_dropped", "apiserver_restart", "apiserver_outage"):
            await self.api_server_fault(planned)
        elif kind in ("child_deleted", "child_edited"):
            await self.system.kube.call(lambda: self.someone_else(kind, rng))
        self.stats.faults[kind] += 1

    async def api_server_fault(self, planned: Planned) -> None:
        """The emulator plays each (watches end; 429 then 410 Gone; 503 throughout); a real kube-apiserver is
        stopped (SIGTERM; kill -9; kill -9 and away) and started again, every request failing meanwhile."""
        kube, kind, first = self.system.kube, planned.kind, planned.draws[0]
        if kind == "watches_dropped":
            seconds = 0.0
            self.record("fault", n=planned.n, kind=kind)
        else:
            seconds = self.span(first, 1, 8) if kind == "apiserver_restart" else self.span(first, 10, 60)
            self.record("fault", n=planned.n, kind=kind, seconds=round(seconds, 1))
        self.api_down = kind == "apiserver_outage" or kube.restart_stops_api
        try:
            if kind == "watches_dropped":
                await kube.drop_watches()
            elif kind == "apiserver_restart":
                await kube.restart(seconds)
            else:
                await kube.outage(seconds)
        finally:
            self.api_down = False

    async def cluster_fault(self, planned: Planned) -> None:
        """A Redis Cluster fault; recorded when it starts (with its target) and when it is over."""
        side = self.system.redis
        assert isinstance(side, RedisClusterSide)
        kind, pick, first = planned.kind, planned.pick, planned.draws[0]
        self.record("fault", n=planned.n, kind=kind)
        if kind == "failover_redis":
            did = await side.failover(pick)
        elif kind == "kill_redis_master":
            did = await side.kill_master(pick, self.span(first, 2, 20))
        elif kind == "freeze_redis_master":  # the node timeout is 3 s: about half of these fail it over
            did = await side.freeze_master(pick, self.span(first, 1, 7))
        else:
            did = await side.migrate_slot(pick, STREAM)
        self.record("fault_done", n=planned.n, kind=kind, target=did)

    def someone_else(self, kind: str, rng: random.Random) -> None:
        cluster = self.cluster
        lps = [lp for lp in self.system.controllers.platforms() if not lp["spec"].get("paused")]
        if not lps:
            return
        lp = rng.choice(lps)
        ns, name = lp["metadata"]["namespace"], lp["metadata"]["name"]
        if kind == "child_deleted":
            plural, api_version = rng.choice([("configmaps", "v1"), ("services", "v1"),
                                                   ("deployments", "apps/v1"), ("networkpolicies",
                                                                                "networking.k8s.io/v1")])
            candidates = [o for o in cluster.all(api_version, plural, ns)
                          if any(r.get("uid") == lp["metadata"]["uid"] for r in o["metadata"].get("ownerReferences")
                                 or [])]
            if candidates:
                victim = rng.choice(candidates)["metadata"]["name"]
                with contextlib.suppress(KeyError, kmock.KubernetesError):  # gone meanwhile
                    cluster.remove(api_version, plural, ns, victim)
                self.record("fault", kind=kind, target=f"{plural}/{ns}/{victim}")
        else:
            target = f"{name}-learner-api"

            def mutate(obj: dict[str, Any]) -> None:
                obj["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/someone/else:latest"

            with contextlib.suppress(KeyError, kmock.KubernetesError):
                cluster.update("apps/v1", "deployments", ns, target, mutate)
                self.record("fault", kind=kind, target=f"deployments/{ns}/{target}")
        self.churn.pending.setdefault((ns, name), (now(), int(lp["metadata"].get("generation") or 1)))

    async def fault_loop(self, until: float) -> None:
        """Inject the plan's faults until ``until``; one whose target is still busy, or beyond
        ``--max-faults`` at once, is skipped (and recorded so)."""
        tasks: set[asyncio.Task[None]] = set()
        for planned in self.plan:
            await asyncio.sleep(planned.gap)
            target = self.TARGET.get(planned.kind)
            if now() >= until:
                break
            if len(tasks) >= self.args.max_faults or (target or planned.kind) in self.busy:
                self.record("fault_skipped", n=planned.n, kind=planned.kind, busy=sorted(self.busy))
                continue

            async def run(planned: Planned = planned, target: str | None = target) -> None:
                if target:
                    self.busy.add(target)
                try:
                    await self.fault(planned)
                except Exception as exc:  # a fault that could not be injected is reported
                    self.record("fault_failed", n=planned.n, kind=planned.kind, error=repr(exc))
                    print(f"  fault {planned.kind} could not be injected: {exc!r}", flush=True)
                finally:
                    if target:
                        self.busy.discard(target)
                    self.last_fault_end = now()

            task = asyncio.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, until - now()))  # the plan's last fault may come well before the end
        if tasks:
            await asyncio.wait(tasks, timeout=120)
        self.last_fault_end = now()
