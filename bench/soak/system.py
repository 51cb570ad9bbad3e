"""The system under test: PostgreSQL, Redis, the Kubernetes API, the operator replicas, learner-api and
its evaluators, and the controllers the API server lacks (the soak plays them).

Two seams, each a Protocol: ``RedisSide`` (``RedisServer``, one server, or ``RedisClusterSide``, six
nodes: ``--redis``) and ``KubeSide`` (bench/soak/kube.py: the emulator, or a real control plane).
``redis_side`` and ``kube_side`` pick one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import Protocol

import asyncpg
import httpx
import redis.asyncio as aioredis

from bench.soak.common import BIN, JWT_SECRET, LEASE_NS, STREAM, TENANTS, WEBHOOK_SECRET, now, until
from bench.soak.history import History
from bench.soak.kube import Controllers, kube_side
from bench.soak.processes import Postgres, Proc
from bench.soak.redis_cluster import RedisClusterSide
from learner_api.migrate import migrate
from learner_api.seed import seed
from tests.net import free_port


async def redis_ping(url: str) -> bool:
    client = aioredis.from_url(url)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


class RedisSide(Protocol):
    """The Redis side of the system: where its clients connect (``url``, and ``service_env`` for learner-api
    and the evaluator), the processes it runs (started by ``start``, supervised with the others), a client
    for the checks and the URL of every node holding keys."""

    cluster: bool

    @property
    def url(self) -> str: ...

    @property
    def service_env(self) -> dict[str, str]: ...

    def processes(self) -> list[Proc]: ...

    async def start(self) -> None: ...

    def client(self) -> aioredis.Redis: ...

    async def node_urls(self) -> list[str]: ...


class RedisServer:
    """One throwaway redis-server, its append-only file fsynced on every write (a managed Redis does not lose
    what it acknowledged); ``proc`` is what the Redis faults kill, freeze and restart."""

    cluster = False

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc = Proc("redis", "redis", [
            shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder),
            "--protected-mode", "yes"], dict(os.environ), self.folder / "log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def service_env(self) -> dict[str, str]:
        return {}

    def processes(self) -> list[Proc]:
        self.folder.mkdir(exist_ok=True)
        return [self.proc]

    async def start(self) -> None:
        self.proc.start()
        await until(lambda: redis_ping(self.url), 20, "the soak's Redis answers")

    def client(self) -> aioredis.Redis:
        return aioredis.from_url(self.url)

    async def node_urls(self) -> list[str]:
        return [self.url]


def redis_side(folder: Path, kind: str = "server") -> RedisSide:
    """The Redis the soak runs: one server, or a Redis Cluster of six nodes (``--redis cluster``)."""
    if kind == "cluster":
        return RedisClusterSide(folder / "redis-cluster")
    return RedisServer(folder / "redis")


class System:
    """Every process the soak started, by name, with the stores and the API they talk to."""

    def __init__(self, args: argparse.Namespace, folder: Path, history: History) -> None:
        self.args, self.folder, self.history = args, folder, history
        self.postgres = Postgres(folder / "postgres")
        self.redis_kind = getattr(args, "redis", "server")
        self.redis = redis_side(folder, self.redis_kind)
        self.kube = kube_side(args.kube, folder)
        self.controllers = Controllers(self.kube.cluster)
        self.procs: dict[str, Proc] = {}

    def app_url(self, database: str = "soak") -> str:
        return f"postgresql://soak_app@127.0.0.1:{self.postgres.port}/{database}"

    def admin_db_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.postgres.port}/soak"

    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p.env['PORT']}" for p in self.procs.values() if p.kind == "api"]

    async def setup_data(self) -> None:
        self.postgres.init()
        self.postgres.start()
        for proc in self.redis.processes():
            self.procs[proc.name] = proc
        await self.redis.start()
        admin = await asyncpg.connect(self.postgres.admin_url)
        try:
            await admin.execute('CREATE DATABASE "soak"')
        finally:
            await admin.close()
        await migrate(self.admin_db_url())
        admin = await asyncpg.connect(self.admin_db_url())
        try:
            await admin.execute("CREATE ROLE soak_app LOGIN; GRANT learner_app TO soak_app")
        finally:
            await admin.close()
        for tenant in TENANTS:
            # seed announces the content version with a plain client: on a cluster the cache starts cold instead
            await seed(self.admin_db_url(), None if self.redis.cluster else self.redis.url, tenant)

    def _service_env(self, port: int, metrics_port: int, pod: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "DATABASE", "REDIS"))}
        return {**env, "DATABASE_URL": self.app_url(), "REDIS_URL": self.redis.url, "NODE_ENV": "development",
                "JWT_SECRET": JWT_SECRET, "PAYMENT_WEBHOOK_SECRET": WEBHOOK_SECRET, "PORT": str(port),
                "METRICS_PORT": str(metrics_port), "PROGRESS_STREAM": STREAM, "LOG_FORMAT": "text",
                "RATE_LIMIT_PER_LEARNER": "1000000", "RATE_LIMIT_PER_TENANT": "1000000", "POD_NAME": pod,
                "EVALUATOR_CLAIM_IDLE_SECONDS": "15", "DATABASE_POOL_MAX": "5", **self.redis.service_env}

    def start_services(self) -> None:
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        for i in range(2):
            port, metrics = free_port(), free_port()
            self.procs[f"api-{i}"] = Proc(
                f"api-{i}", "api", [str(BIN / "learner-api"), "serve", "--host", "127.0.0.1", "--drain-seconds", "0"],
                self._service_env(port, metrics, f"api-{i}"), logs / f"api-{i}.log",
                ready_url=f"http://127.0.0.1:{port}/readyz")
            metrics = free_port()
            self.procs[f"evaluator-{i}"] = Proc(
                f"evaluator-{i}", "evaluator", [str(BIN / "learner-api"), "evaluator"],
                self._service_env(free_port(), metrics, f"evaluator-{i}"), logs / f"evaluator-{i}.log",
                ready_url=f"http://127.0.0.1:{metrics}/livez")
        for proc in self.procs.values():
            if proc.kind in ("api", "evaluator"):
                proc.start()

    def start_operators(self) -> None:
        logs = self.folder / "logs"
        kubeconfig = self.kube.kubeconfig(self.folder)
        for i in range(self.args.replicas):
            health = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
            env.update(KUBECONFIG=str(kubeconfig), POD_NAME=f"replica-{i}")
            self.procs[f"operator-{i}"] = proc = Proc(f"operator-{i}", "operator", [
                str(BIN / "learner-operator"), "run", "--all-namespaces", "--lease-namespace", LEASE_NS,
                "--lease-seconds", "5", "--liveness", f"http://127.0.0.1:{health}/healthz",
                "--metrics-port", str(free_port()), "--resync-seconds", str(self.args.resync_seconds)],
                env, logs / f"operator-{i}.log", ready_url=f"http://127.0.0.1:{health}/healthz")
            proc.start()

    async def wait_ready(self, names: list[str] | None = None, within: float = 60.0) -> list[str]:
        """The processes (all by default) that did not answer their readiness URL within ``within``."""
        targets = [self.procs[n] for n in (names or list(self.procs)) if self.procs[n].ready_url]
        deadline = now() + within
        late = []
        async with httpx.AsyncClient(timeout=2) as client:
            for proc in targets:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        assert proc.ready_url is not None
                        if (await client.get(proc.ready_url)).status_code == 200:
                            break
                    if now() > deadline:
                        late.append(proc.name)
                        break
                    await asyncio.sleep(0.3)
        return late

    async def supervise(self, hard_stop: asyncio.Event) -> None:
        """Restart a process that died by itself (a kubelet would), sample RSS: until the end."""
        while not hard_stop.is_set():
            for proc in list(self.procs.values()):
                if proc.wanted and proc.process is not None and proc.process.poll() is not None:
                    self.history.stats.crashes.append(f"{proc.name} exited by itself ({proc.process.returncode})")
                    self.history.broke(f"{proc.name} exited by itself (status {proc.process.returncode}; "
                                       f"see {proc.log}): restarted, as the kubelet would")
                    proc.start()
                    proc.restarts += 1
                proc.rss_mib()
            await asyncio.sleep(2)
