"""The faults, drawn from the seed, several at once: each injected, held for a while and recovered from.

kill -9 of the operator's leader or a follower, of a learner-api or evaluator process; SIGSTOP/SIGCONT of
PostgreSQL, Redis or an operator replica; restart of PostgreSQL or Redis; the API server dropping every
watch, restarting (429, then 410 Gone) or away for 10-60 s (503) on the emulator, kube-apiserver stopped
(SIGTERM, kill -9) and started again, or away 10-60 s, on a real control plane; a child deleted or edited by
someone else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
from typing import Any, ClassVar

import kmock

from bench.soak.common import now
from bench.soak.history import History
from bench.soak.load import Churn
from bench.soak.processes import Proc
from bench.soak.system import System


class Faults:
    """Injects the faults; ``busy`` names what a fault holds, ``api_down`` is true while the API server is
    away, ``last_fault_end`` when the last one ended (convergence is timed from it)."""

    FAULTS = ("kill_operator_leader", "kill_operator_follower", "freeze_operator", "kill_api", "kill_evaluator",
              "freeze_postgres", "restart_postgres", "kill_postgres", "freeze_redis", "restart_redis", "kill_redis",
              "watches_dropped", "apiserver_restart", "apiserver_outage", "child_deleted", "child_edited")
    TARGET: ClassVar[dict[str, str]] = {
        "freeze_postgres": "postgres", "restart_postgres": "postgres", "kill_postgres": "postgres",
        "freeze_redis": "redis", "restart_redis": "redis", "kill_redis": "redis",
        "apiserver_restart": "kube", "apiserver_outage": "kube", "watches_dropped": "kube"}

    def __init__(self, system: System, churn: Churn, rng: random.Random, history: History,
                 args: argparse.Namespace) -> None:
        self.system, self.churn, self.rng, self.history, self.args = system, churn, rng, history, args
        self.procs, self.postgres, self.cluster = system.procs, system.postgres, system.kube.cluster
        self.stats = history.stats
        self.busy: set[str] = set()
        self.api_down = False
        self.last_fault_end = now()

    def record(self, op: str, **fields: Any) -> None:
        self.history.record(op, **fields)

    def span(self, low: float, high: float) -> float:
        """A fault's duration from the seed, at most ``--longest-fault`` seconds (same draws whatever the cap)."""
        return min(self.rng.uniform(low, high), float(self.args.longest_fault))

    async def _restart_later(self, proc: Proc, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))
        proc.start()
        proc.restarts += 1

    async def fault(self, kind: str) -> None:
        rng = self.rng
        operators = [p for p in self.procs.values() if p.kind == "operator"]
        if kind in ("kill_operator_leader", "kill_operator_follower", "freeze_operator"):
            leader = await self.system.kube.call(self.system.controllers.leader)
            pool = [p for p in operators if p.running() and not p.frozen and p.name not in self.busy and
                    ((p.name == leader) == (kind == "kill_operator_leader") or kind == "freeze_operator")]
            if not pool:
                return
            proc = rng.choice(pool)
            self.busy.add(proc.name)
            self.record("fault", kind=kind, target=proc.name, leader=leader)
            try:
                if kind == "freeze_operator":
                    proc.send(signal.SIGSTOP)
                    proc.frozen = True
                    await asyncio.sleep(self.span(2, 30))
                    proc.send(signal.SIGCONT)
                    proc.frozen = False
                else:
                    proc.kill9()
                    await self._restart_later(proc, 0.5, 10)
            finally:
                self.busy.discard(proc.name)
        elif kind in ("kill_api", "kill_evaluator"):
            pool = [p for p in self.procs.values() if p.kind == kind.split("_")[1] and p.running()
                    and p.name not in self.busy]
            if not pool:
                return
            proc = rng.choice(pool)
            self.busy.add(proc.name)
            self.record("fault", kind=kind, target=proc.name)
            try:
                proc.kill9()
                await self._restart_later(proc, 0.5, 5)
            finally:
                self.busy.discard(proc.name)
        elif kind in ("freeze_postgres", "restart_postgres", "kill_postgres"):
            self.record("fault", kind=kind)
            if kind == "freeze_postgres":
                self.postgres.freeze()
                await asyncio.sleep(self.span(2, 20))
                self.postgres.thaw()
            else:
                await asyncio.to_thread(self.postgres.stop, "fast" if kind == "restart_postgres" else "immediate")
                await asyncio.sleep(rng.uniform(0.5, 5))
                await asyncio.to_thread(self.postgres.start)
        elif kind in ("freeze_redis", "restart_redis", "kill_redis"):
            redis = self.system.redis.proc
            self.record("fault", kind=kind)
            if kind == "freeze_redis":
                redis.send(signal.SIGSTOP)
                await asyncio.sleep(self.span(2, 15))
                redis.send(signal.SIGCONT)
            else:
                if kind == "kill_redis":
                    redis.kill9()
                else:
                    redis.stop()
                await self._restart_later(redis, 0.5, 5)
        elif kind in ("watches_dropped", "apiserver_restart", "apiserver_outage"):
            await self.api_server_fault(kind)
        elif kind in ("child_deleted", "child_edited"):
            await self.system.kube.call(lambda: self.someone_else(kind))
        self.stats.faults[kind] += 1

    async def api_server_fault(self, kind: str) -> None:
        """The emulator plays each (watches end; 429 then 410 Gone; 503 throughout); a real kube-apiserver is
        stopped (SIGTERM; kill -9; kill -9 and away) and started again, every request failing meanwhile."""
        kube = self.system.kube
        if kind == "watches_dropped":
            seconds = 0.0
            self.record("fault", kind=kind)
        else:
            seconds = self.span(1, 8) if kind == "apiserver_restart" else self.span(10, 60)
            self.record("fault", kind=kind, seconds=round(seconds, 1))
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

    def someone_else(self, kind: str) -> None:
        cluster = self.cluster
        lps = [lp for lp in self.system.controllers.platforms() if not lp["spec"].get("paused")]
        if not lps:
            return
        lp = self.rng.choice(lps)
        ns, name = lp["metadata"]["namespace"], lp["metadata"]["name"]
        if kind == "child_deleted":
            plural, api_version = self.rng.choice([("configmaps", "v1"), ("services", "v1"),
                                                   ("deployments", "apps/v1"), ("networkpolicies",
                                                                                "networking.k8s.io/v1")])
            candidates = [o for o in cluster.all(api_version, plural, ns)
                          if any(r.get("uid") == lp["metadata"]["uid"] for r in o["metadata"].get("ownerReferences")
                                 or [])]
            if candidates:
                victim = self.rng.choice(candidates)["metadata"]["name"]
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
        tasks: set[asyncio.Task[None]] = set()
        while now() < until:
            await asyncio.sleep(self.rng.uniform(2, self.args.fault_seconds * 2))
            if now() >= until or len(tasks) >= self.args.max_faults:
                continue
            free = [k for k in self.FAULTS if self.TARGET.get(k, k) not in self.busy]
            kind = self.rng.choice(free)
            target = self.TARGET.get(kind)

            async def run(kind: str = kind, target: str | None = target) -> None:
                if target:
                    self.busy.add(target)
                try:
                    await self.fault(kind)
                except Exception as exc:  # a fault that could not be injected is reported
                    self.record("fault_failed", kind=kind, error=repr(exc))
                    print(f"  fault {kind} could not be injected: {exc!r}", flush=True)
                finally:
                    if target:
                        self.busy.discard(target)
                    self.last_fault_end = now()

            task = asyncio.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=120)
        self.last_fault_end = now()
