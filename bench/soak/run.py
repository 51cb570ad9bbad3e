"""The run: set the system up, load it and inject faults for ``--minutes``, then check, report and stop all."""

from __future__ import annotations

import argparse
import asyncio
import random
from pathlib import Path

from bench.soak.checks import Checks
from bench.soak.common import now
from bench.soak.faults import Faults, plan_digest
from bench.soak.history import History, report, summary
from bench.soak.kube import KUBE_ERRORS
from bench.soak.load import Churn, Clients
from bench.soak.system import System


class Soak:
    """Wires the parts together. The faults, the churn and the load each draw from a random source of their
    own derived from the seed, so that the load's timing-dependent draws do not shift the faults: a seed
    replays the same fault plan (its digest is in the report)."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args, self.folder = args, folder
        self.churn_rng = random.Random(f"{args.seed}:churn")  # noqa: S311  # replayable, not secret
        self.history = History(Path(args.history) if args.history else folder / f"history-seed{args.seed}.jsonl")
        self.system = System(args, folder, self.history)
        self.churn = Churn(self.system.kube.cluster, self.churn_rng, self.history, args)
        self.clients = Clients(self.system, random.Random(f"{args.seed}:load"), self.history,  # noqa: S311
                               args.seed)
        self.faults = Faults(self.system, self.churn, self.history, args)
        self.checks = Checks(self.system, self.churn, self.clients, self.faults, self.history, args)
        self.stopping_churn = False

    async def kube_loop(self) -> None:
        """Play the controllers, churn the platforms, measure convergence, watch for zombies: until the end.
        A pass that meets the API server away (a real one restarting) is counted and tried again."""
        next_churn = now() + 1

        def one_pass() -> None:
            nonlocal next_churn
            self.system.controllers.play_controllers()
            if now() >= next_churn and not self.stopping_churn:
                self.churn.churn_once()
                next_churn = now() + self.churn_rng.uniform(1.0, self.args.churn_seconds * 2)
            self.checks.measure_convergence()

        while not self.clients.stop_load.is_set():
            if not self.faults.api_down:
                try:
                    await self.system.kube.call(one_pass)
                except KUBE_ERRORS as exc:
                    self.history.stats.requests[f"kube pass {type(exc).__name__}"] += 1
                    self.history.record("kube_pass_failed", error=repr(exc)[:300])
            await asyncio.sleep(self.system.kube.pass_seconds)

    async def run(self) -> int:
        args = self.args
        print(f"soak: seed {args.seed}, {args.minutes} min of load and faults, Kubernetes: {self.system.kube.name}, "
              f"Redis {self.system.redis_kind}, folder {self.folder}", flush=True)
        self.history.record("start", seed=args.seed, minutes=args.minutes, kube=self.system.kube.name,
                            redis=self.system.redis_kind)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.system.setup_data()
            async with self.system.kube.serving():
                await self.system.kube.call(self.system.controllers.prepare)
                self.system.start_services()
                self.system.start_operators()
                late = await self.system.wait_ready(within=90)
                if late:
                    self.history.broke(f"not ready at start: {late}")
                tasks = [asyncio.create_task(self.system.supervise(self.clients.hard_stop))]
                kube = asyncio.create_task(self.kube_loop())
                load_tasks = [asyncio.create_task(self.clients.progress_worker(i))
                              for i in range(args.progress_workers)]
                load_tasks.append(asyncio.create_task(self.clients.purchase_worker()))
                tasks += [kube, *load_tasks]
                await self.faults.fault_loop(now() + args.minutes * 60)
                self.stopping_churn = True
                injected = sum(self.history.stats.faults.values())
                print(f"faults over ({injected} injected); stopping the load", flush=True)
                self.clients.stop_load.set()
                await asyncio.wait(load_tasks, timeout=120)
                self.clients.hard_stop.set()
                await asyncio.wait(load_tasks, timeout=30)
                await asyncio.wait_for(kube, 30)
                await self.checks.finish()
        finally:
            self.clients.stop_load.set()
            self.clients.hard_stop.set()
            for task in tasks:
                task.cancel()
            for proc in self.system.procs.values():
                proc.stop()
            self.system.postgres.stop("immediate")
        return self.report()

    def report(self) -> int:
        rss: dict[str, float] = {}
        for proc in self.system.procs.values():
            rss[proc.kind] = max(rss.get(proc.kind, 0.0), proc.peak_rss_mib)
        buyers = self.clients.buyers.values()
        figures = {"kube": self.system.kube.name, **summary(
            self.history.stats, seed=self.args.seed, minutes=self.args.minutes,
            quiet_seconds=self.args.quiet_seconds,
            events=(len(self.clients.progress_sent), len(self.clients.progress_acked), self.checks.stored_events),
            purchases=(len(buyers), sum(1 for b in buyers if b["order"]), sum(1 for b in buyers if b["paid"])),
            peak_rss_mib=rss, redis_keys=(self.checks.redis_keys, self.checks.redis_keys_without_ttl))}
        plan = self.faults.plan
        figures["fault_plan"] = {"redis": self.system.redis_kind, "planned": len(plan), "digest": plan_digest(plan),
                                 "first": [p.line() for p in plan[:8]]}
        return report(self.history, figures)
